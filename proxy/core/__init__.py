"""The domain: grants and their credentials, refresh (the only place it happens), the validator
and the limits. Never imports aiohttp.web nor reads an application: services are passed in."""
