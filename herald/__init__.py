"""Herald: event-driven multi-channel notifications on Kafka and PostgreSQL.

The ``herald`` package is the code every service shares: settings, the topic catalogue,
Avro serde, database models, the local stack and the ``herald`` command line.
"""

from pathlib import Path

__version__ = "0.1.0"

#: The repository root when running from a checkout (editable install); the local stack's
#: state lives in ``<root>/.local`` unless ``HERALD_LOCAL_DIR`` says otherwise.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
