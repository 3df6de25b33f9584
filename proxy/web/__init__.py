"""The aiohttp application: routes, middlewares and the AppKeys that hold the services."""
