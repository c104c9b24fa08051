"""``python -m services.webhook_sender.slack``: run the Slack sender (the webhook sender's
``slack`` kind: same code, its own topic, consumer group, settings and metrics port)."""

from services.webhook_sender.service import main

if __name__ == "__main__":
    raise SystemExit(main("slack"))
