"""A fake Twitch (id.twitch.tv plus a slice of Helix) to test the proxy over real HTTP.

Point the proxy's ``id_url`` at the mock's root and its ``helix_url`` at
``<root>/helix``. The mock keeps every user, code and token in one
:class:`MockTwitch` object, stored on the app under :data:`mock_twitch_key`,
so a test can look inside, mint tokens without a browser, expire or revoke
them, and inject faults and latency. What it answers, and with which bodies,
follows Twitch's documentation and observed behaviour; where Twitch is loose
the mock is strict (refresh tokens are single use and always contain ``/`` and
``%``), so that a proxy that passes here also copes with the real thing.

Modules, one concern each:

- :mod:`.state`: :class:`MockTwitch`, what it knows and the knobs a test turns;
  :mod:`.records`: the users, streams, codes and tokens it keeps.
- :mod:`.oauth`: ``GET|POST /oauth2/authorize`` (auto-approves by default,
  otherwise the consent page of :mod:`.consent`), ``POST /oauth2/token``
  (``authorization_code``, ``refresh_token`` and ``client_credentials``;
  form-encoded bodies only), ``GET /oauth2/validate``, ``POST /oauth2/revoke``.
- :mod:`.helix`: ``/helix/users``, ``/helix/streams``, ``/helix/subscriptions``,
  ``/helix/chat/messages``, ``PATCH /helix/channels`` and any ``DELETE``;
  every other Helix path is a 404.
- :mod:`.control`: ``/_mock/...``, the same knobs over HTTP, for a proxy (and
  its tests) running in another process.
- EventSub over WebSocket: :mod:`.eventsub_socket` serves ``/ws`` (the
  mock's ``wss://eventsub.wss.twitch.tv/ws``: ``ws://<host>:<port>/ws``),
  :mod:`.eventsub_helix` ``/helix/eventsub/subscriptions``,
  :mod:`.eventsub_control` ``/_mock/eventsub/...`` (trigger events, reconnect,
  revoke, silence, drop); :mod:`.eventsub_state` holds the sessions
  (``MockTwitch.eventsub``), :mod:`.eventsub_catalog` the subscription types and
  their sample events, :mod:`.eventsub_messages` the frames and
  :mod:`.eventsub_records` the sessions, connections and subscriptions.
- :mod:`.app`: :func:`create_mock_app`, :data:`mock_twitch_key` and :func:`main`.

Run it alone with ``python -m proxy.mock_twitch --port 8081``; it prints its URL.
"""

from .app import create_mock_app, main, mock_twitch_key
from .eventsub_records import Session, Subscription
from .eventsub_state import EventSubState, ws_url
from .helix import HELIX_MAX_IDS
from .oauth import CODE_TTL
from .records import AccessToken, AuthorizationCode, HelixRequest, RefreshToken, Stream, User
from .state import (
    APP_ACCESS_TTL,
    DEFAULT_USER_DISPLAY_NAME,
    DEFAULT_USER_ID,
    DEFAULT_USER_LOGIN,
    FAILABLE_ENDPOINTS,
    RATELIMIT_WINDOW,
    USER_ACCESS_TTL,
    MockTwitch,
)

__all__ = [
    "APP_ACCESS_TTL",
    "CODE_TTL",
    "DEFAULT_USER_DISPLAY_NAME",
    "DEFAULT_USER_ID",
    "DEFAULT_USER_LOGIN",
    "FAILABLE_ENDPOINTS",
    "HELIX_MAX_IDS",
    "RATELIMIT_WINDOW",
    "USER_ACCESS_TTL",
    "AccessToken",
    "AuthorizationCode",
    "EventSubState",
    "HelixRequest",
    "MockTwitch",
    "RefreshToken",
    "Session",
    "Stream",
    "Subscription",
    "User",
    "create_mock_app",
    "main",
    "mock_twitch_key",
    "ws_url",
]
