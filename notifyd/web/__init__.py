"""The web view (HTTP API, console, realtime, unsubscribe), mounted by :mod:`.view`."""
