"""Herald service: inapp_store."""
