"""twitch-oauth-proxy: holds a Twitch app's secret and users' tokens for widgets.

The package is layered; imports only go down (``tests/unit/test_layout.py`` checks it):

- entry points: :mod:`proxy.cli` (``python -m proxy``, ``twitch-proxy``), :mod:`proxy.server`
  (one process or gunicorn workers), :mod:`proxy.admin` (``twitch-proxy grants|keys ...``);
- :mod:`proxy.services`: every service built from the configuration, once, and opened and
  closed in order; the web app, the admin commands and the benchmark use it;
- :mod:`proxy.web`: the aiohttp application. :mod:`proxy.web.app` registers the middlewares
  (:mod:`proxy.web.middleware`: request log, header check, abuse limits) and the routes
  (:mod:`proxy.web.routes`: ``/helix/*`` in :mod:`proxy.web.routes.helix`, ``/login``,
  ``/callback`` and ``/refresh`` in :mod:`proxy.web.routes.oauth`, ``/status``, ``/metrics``,
  the pages...), handing each the services; :mod:`proxy.web.keys` holds the AppKeys;
- :mod:`proxy.core`: grants and where tokens live (:mod:`proxy.core.grants`), refresh and only
  there (:mod:`proxy.core.refresh`), credentials, the /helix retry policy
  (:mod:`proxy.core.helix_call`), the grant cache, the validator, the abuse limits;
- :mod:`proxy.upstream`: everything said to Twitch (OAuth in :mod:`proxy.upstream.twitch`,
  Helix in :mod:`proxy.upstream.helix_client`), Twitch's rate-limit gate and the shared GETs;
- :mod:`proxy.store`: the token store backends and encryption;
- :mod:`proxy.telemetry`: logs, metrics and the request context;
- :mod:`proxy.config` and :mod:`proxy.errors` at the bottom;
- :mod:`proxy.mock_twitch`: a fake Twitch for tests and ``--mock-twitch``.
"""

__version__ = "0.1.0"
