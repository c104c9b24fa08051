"""Herald's single source of truth for topics and record schemas.

- ``topics.toml``: every topic (name, key, partitions, retention, cleanup, value schema,
  retry tiers, DLQ), loaded into :data:`CATALOGUE`.
- ``avro/<Name>.avsc``: the current schema of each value ``herald.<Name>``.
- ``avro/history/<Name>.v<N>.avsc``: older writer versions that readers must still decode.

Schema rules that keep evolution working: identity fields (ids, type codes, channel) and
timestamps are required; every other field has a default, so it can be added or removed
later. Never change a field's type in place; add a new field instead, and keep the previous
schema in ``avro/history/`` once records written with it exist.
"""

from schemas.catalogue import (
    HISTORY_DIR,
    RETRY_DELAYS_ENV,
    SCHEMA_DIR,
    TOPICS_FILE,
    Catalogue,
    CatalogueError,
    RetryTier,
    TopicDeclaration,
    TopicSpec,
    UnknownTopicError,
    avsc_path,
    load_catalogue,
)

#: The catalogue as shipped, with ``HERALD_RETRY_DELAYS_MS`` applied at import time.
#: Services call ``CATALOGUE.with_prefix(settings.kafka.topic_prefix)``.
CATALOGUE: Catalogue = load_catalogue()

__all__ = [
    "CATALOGUE",
    "HISTORY_DIR",
    "RETRY_DELAYS_ENV",
    "SCHEMA_DIR",
    "TOPICS_FILE",
    "Catalogue",
    "CatalogueError",
    "RetryTier",
    "TopicDeclaration",
    "TopicSpec",
    "UnknownTopicError",
    "avsc_path",
    "load_catalogue",
]
