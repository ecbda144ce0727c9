"""The sandbox delivery providers: an SMS/push/webhook HTTP API (``provider``), an SMTP sink."""
