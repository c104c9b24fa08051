"""``python -m services.sms_sender``: run the SMS sender."""

from services.sms_sender.service import main

raise SystemExit(main())
