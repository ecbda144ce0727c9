"""Authentication of the web view: users, tokens, sessions, OIDC and the credential store."""
