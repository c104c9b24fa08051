"""Herald service: email_sender."""
