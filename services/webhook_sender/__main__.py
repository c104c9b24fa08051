"""``python -m services.webhook_sender``: run the webhook sender."""

from services.webhook_sender.service import main

raise SystemExit(main("webhook"))
