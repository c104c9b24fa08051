"""Herald service: ingest."""
