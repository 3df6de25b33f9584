"""Logs and metrics: what the proxy tells its operator, never a token."""
