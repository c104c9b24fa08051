"""Herald service: ingest — the HTTP API that publishes events and administers event types,
users and preferences (``python -m services.ingest``; app factory in
:mod:`services.ingest.app`)."""
