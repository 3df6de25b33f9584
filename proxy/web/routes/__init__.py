"""One module per group of routes; each gets its services from proxy.web.app."""
