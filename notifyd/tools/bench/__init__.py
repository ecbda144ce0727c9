"""``notifyd bench``: notifyd against the raw-client floor, one broker, one run."""
