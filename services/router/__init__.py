"""Herald service: router."""
