"""``python -m services.email_sender``: run the email sender."""

from services.email_sender.service import main

raise SystemExit(main())
