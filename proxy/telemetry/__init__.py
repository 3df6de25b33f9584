"""Logs, metrics and the request context: what the proxy tells its operator, never a token."""
