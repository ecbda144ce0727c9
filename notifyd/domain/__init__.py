"""Pure decisions on a notification: routing rules, templates, channel rules, unsubscribe links."""
