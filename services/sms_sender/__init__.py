"""Herald service: sms_sender."""
