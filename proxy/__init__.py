"""twitch-oauth-proxy: holds a Twitch app's secret and users' tokens for widgets.

The package is layered; imports only go down (``tests/unit/test_layout.py`` checks it):

- entry points: :mod:`proxy.cli` (``python -m proxy``, ``twitch-proxy``), :mod:`proxy.server`
  (one process or gunicorn workers), :mod:`proxy.admin` (``twitch-proxy grants|keys ...``);
- :mod:`proxy.web`: the aiohttp application. A request enters in :mod:`proxy.web.app`
  (middlewares, then a route in :mod:`proxy.web.routes`: ``/helix/*`` in
  :mod:`proxy.web.routes.helix`, ``/login``, ``/callback`` and ``/refresh`` in
  :mod:`proxy.web.routes.oauth`);
- :mod:`proxy.core`: grants and where tokens live (:mod:`proxy.core.grants`), refresh and only
  there (:mod:`proxy.core.refresh`), credentials, the validator, limits;
- :mod:`proxy.upstream`: everything said to Twitch (OAuth in :mod:`proxy.upstream.twitch`,
  Helix in :mod:`proxy.upstream.helix_client`);
- :mod:`proxy.store`: the token store backends and encryption;
- :mod:`proxy.telemetry`: logs and metrics;
- :mod:`proxy.config` and :mod:`proxy.errors` at the bottom;
- :mod:`proxy.mock_twitch`: a fake Twitch for tests and ``--mock-twitch``.
"""

__version__ = "0.1.0"
