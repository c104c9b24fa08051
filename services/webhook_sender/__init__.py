"""Herald service: webhook_sender (signed webhooks; ``.slack``: Slack incoming webhooks)."""
