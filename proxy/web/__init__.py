"""The aiohttp application: routes and middlewares given their services, and the AppKeys."""
