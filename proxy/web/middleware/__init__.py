"""Middlewares, in the order proxy.web.app installs them."""
