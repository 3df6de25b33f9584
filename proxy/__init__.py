"""twitch-oauth-proxy: holds a Twitch app's secret and users' tokens for widgets.

Where things are:

- a request enters in :mod:`proxy.app` (routes and middlewares are wired there),
- ``/login``, ``/callback`` and ``/refresh`` are in :mod:`proxy.oauth`,
- ``/helix/*`` is in :mod:`proxy.helix`,
- tokens live in :mod:`proxy.grants` on top of a :mod:`proxy.store` backend,
- refresh happens in :mod:`proxy.refresh`, and only there,
- everything said to Twitch's OAuth server goes through :mod:`proxy.twitch`,
- every grant is validated hourly by :mod:`proxy.validator`,
- ``twitch-proxy grants ...`` / ``keys ...`` are in :mod:`proxy.admin`,
- serving (one process or gunicorn workers, SIGTERM, TLS) is :mod:`proxy.server`,
- every request passes :mod:`proxy.requestlog` first (request id, one log line),
  which believes ``X-Forwarded-*`` only through :mod:`proxy.forwarded`,
- ``/metrics`` is :mod:`proxy.metrics`.
"""

__version__ = "0.1.0"
