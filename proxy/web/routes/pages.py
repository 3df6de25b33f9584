"""Server-rendered HTML pages: landing, login result, status and errors.

Pages are plain HTML from the Jinja2 templates in ``proxy/templates`` (set up by
:func:`setup_pages`, with autoescape on: this module passes values, never markup),
one small stylesheet and one optional script under ``/static``; no build step, no
CDN, usable without JavaScript (the script only adds copy buttons). Every page gets
the security headers of :func:`page_headers`.

What each page is for:

- ``/`` (:func:`landing_page`): what this proxy is, which Twitch app and scopes,
  a scope picker limited to ``twitch.allowed_scopes`` and "Connect with Twitch";
- ``/callback`` (:func:`callback_page`): the proxy key, the Twitch tokens and a
  widget snippet, all hidden behind "show" and each with a copy button;
- ``/status`` (:func:`status_page`): a key pasted into a POST form (never put in
  a URL), the grant's state, and "log in again" when Twitch dropped it;
- errors (:func:`error_page`): what happened and what to do next.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web
from yarl import URL

from ...config import Config
from ...core.grant_records import ACTIVE, NEEDS_REAUTH
from ...errors import ProxyError
from ..forwarded import public_url_for, redirect_uri_for
from ..keys import config_key

__all__ = [
    "PAGE_HEADERS",
    "SCOPE_DESCRIPTIONS",
    "callback_page",
    "error_page",
    "landing_page",
    "page_headers",
    "render",
    "setup_pages",
    "status_page",
    "widget_snippet",
]

#: Sent with every HTML page. The CSP allows no inline script or style, so an
#: injected tag cannot run; pages that show secrets are never cached, framed,
#: or named in a Referer. :func:`page_headers` adds Twitch to ``form-action``.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
}

#: What a scope lets a widget do, in a streamer's words. Scopes not listed are
#: shown by name only.
SCOPE_DESCRIPTIONS = {
    "user:read:email": "Read your email address",
    "user:read:chat": "Read chat messages in channels",
    "user:write:chat": "Send chat messages as you",
    "user:read:follows": "See the channels you follow",
    "user:read:subscriptions": "See the channels you subscribe to",
    "channel:read:subscriptions": "See your channel's subscribers",
    "channel:read:redemptions": "See channel point redemptions",
    "channel:manage:redemptions": "Manage channel point rewards and redemptions",
    "channel:manage:broadcast": "Change your stream title and category",
    "channel:read:polls": "See your channel's polls",
    "channel:read:predictions": "See your channel's predictions",
    "channel:read:goals": "See your channel's creator goals",
    "channel:read:hype_train": "See your channel's Hype Trains",
    "moderator:read:followers": "See who follows your channel",
    "moderator:read:chatters": "See who is in your chat",
    "bits:read": "See Bits cheered in your channel",
    "chat:read": "Read chat (IRC)",
    "chat:edit": "Send chat messages (IRC)",
}


def page_headers(config: Config) -> dict[str, str]:
    """:data:`PAGE_HEADERS` for this proxy.

    ``form-action`` also names Twitch's OAuth origin: the landing and status
    forms GET ``/login``, which redirects to Twitch, and Chrome applies
    ``form-action`` to a form's redirects too.
    """
    twitch_origin = str(URL(config.twitch.id_url).origin())
    csp = PAGE_HEADERS["Content-Security-Policy"].replace(
        "form-action 'self'", f"form-action 'self' {twitch_origin}"
    )
    return {**PAGE_HEADERS, "Content-Security-Policy": csp}


def setup_pages(app: web.Application) -> None:
    """Render the pages with Jinja2 from ``proxy/templates``, escaping every value."""
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("proxy", "templates"),
        # Every template, whatever its name: a value never reaches a page unescaped.
        autoescape=True,
        # A misspelt or missing value fails the render instead of showing nothing.
        undefined=jinja2.StrictUndefined,
        # Block tags on lines of their own leave no blank lines in the page.
        trim_blocks=True,
        lstrip_blocks=True,
        # The pages link fixed paths; no url()/static() helpers, nor the app, in templates.
        default_helpers=False,
    )


def _config(request: web.Request) -> Config:
    """The configuration, the one thing the pages read from the app.

    Page helpers take only the request, as the handlers (and the tests) call
    them; every other service reaches a handler when :mod:`proxy.web.app` builds it.
    """
    return request.app[config_key]


def render(request: web.Request, name: str, *, status: int = 200,
           **context: Any) -> web.Response:
    """Render ``templates/<name>`` with :func:`page_headers`; values are passed as they are."""
    response = aiohttp_jinja2.render_template(name, request, context, status=status)
    response.headers.update(page_headers(_config(request)))
    return response


# --- what the templates show -------------------------------------------------

def _duration(seconds: float) -> str:
    """``3 h 55 min`` / ``12 min`` / ``40 s``."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min"
    return f"{secs} s"


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


@dataclass(frozen=True)
class _Expiry:
    """When an access token expires (the ``expiry`` macro); ``left`` is None once it has."""

    left: str | None
    at: datetime


def _expiry(expires_in: float, now: float) -> _Expiry:
    return _Expiry(_duration(expires_in) if expires_in > 0 else None, _utc(now + expires_in))


@dataclass(frozen=True)
class _ScopeChoice:
    """One box of the landing page's scope picker."""

    scope: str
    description: str | None
    checked: bool


@dataclass(frozen=True)
class _GrantView:
    """What ``/status`` shows about the grant behind a key."""

    login: str
    user_id: str
    scopes: list[str]
    state: str
    active: bool
    needs_reauth: bool
    token_expiry: _Expiry
    last_refresh: datetime | None
    last_validated: datetime | None
    #: For "log in again": the grant's scopes that this proxy still offers.
    relogin_scopes: list[str]


def widget_snippet(public_url: str, proxy_key: str) -> str:
    """Widget code that calls Helix through this proxy with ``proxy_key``.

    A classic script (no top-level ``await``), so it can be pasted as it is into
    a StreamElements JS tab or an OBS page's ``<script>``.
    """
    return (
        "// Twitch through your twitch-oauth-proxy. The key is a secret: keep it in\n"
        "// your widget's settings, never on stream.\n"
        f"const PROXY = {json.dumps(public_url)};\n"
        f"const KEY = {json.dumps(proxy_key)};\n"
        "\n"
        "async function helix(path) {\n"
        "  const res = await fetch(PROXY + \"/helix/\" + path, {\n"
        "    headers: { Authorization: \"Bearer \" + KEY },\n"
        "  });\n"
        "  const body = await res.json();\n"
        "  if (res.status === 401 && body.error === \"reauthorization_required\") {\n"
        "    throw new Error(\"Twitch needs you to log in again: \" + body.login_url);\n"
        "  }\n"
        "  if (!res.ok) throw new Error(body.message || \"HTTP \" + res.status);\n"
        "  return body;\n"
        "}\n"
        "\n"
        "helix(\"users\").then(({ data }) => {\n"
        "  console.log(\"Connected as\", data[0].display_name);\n"
        "});\n"
    )


# --- the pages ---------------------------------------------------------------

def landing_page(request: web.Request) -> web.Response:
    """``/``: what this proxy is, the scope picker and "Connect with Twitch"."""
    config = _config(request)
    scope_choices = [
        _ScopeChoice(scope, SCOPE_DESCRIPTIONS.get(scope), scope in config.twitch.scopes)
        for scope in config.twitch.allowed_scopes
    ]
    return render(
        request, "landing.html",
        client_id=config.twitch.client_id,
        scope_choices=scope_choices,
        default_scopes=config.twitch.scopes,
        public_url=public_url_for(request, config.server),
        redirect_uri=redirect_uri_for(request, config.server),
    )


def callback_page(request: web.Request, result: dict[str, Any]) -> web.Response:
    """The login result: key, tokens and snippet behind "show", each with a copy button."""
    public_url = public_url_for(request, _config(request).server)
    return render(
        request, "callback.html",
        login=result["login"],
        user_id=result["user_id"],
        proxy_key=result["proxy_key"],
        public_url=public_url,
        snippet=widget_snippet(public_url, result["proxy_key"]),
        access_token=result["access_token"],
        refresh_token=result["refresh_token"],
        scopes=result["scope"],
        token_expiry=_expiry(float(result["expires_in"]), time.time()),
    )


@dataclass(frozen=True)
class _ErrorText:
    heading: str
    advice: str
    action_label: str = "Start again"
    action_href: str = "/"


_ERROR_TEXTS = {
    "access_denied": _ErrorText(
        "You did not approve the connection",
        "Nothing was stored and no token was created. If you meant to connect, start "
        "again and choose Authorize on Twitch's page.",
        "Connect with Twitch",
    ),
    "invalid_state": _ErrorText(
        "This login is no longer valid",
        "A login works once, for {ttl} minutes, and only in the browser that started it. "
        "Start again from this proxy's front page, in this browser.",
    ),
    "forbidden": _ErrorText(
        "This Twitch account may not use this proxy",
        "The operator of this proxy lets only some Twitch accounts connect. Ask them to "
        "add yours, or start again and tick \"Let me choose the Twitch account again\" to "
        "use another account.",
    ),
    "twitch_refused": _ErrorText(
        "Twitch refused the login",
        "Twitch did not accept the code it sent back (a code works once, for a few "
        "minutes). Start again; if it keeps happening, the operator should check the "
        "Twitch app's client id, secret and redirect URL.",
    ),
    "invalid_request": _ErrorText(
        "This login could not go on",
        "Start again from this proxy's front page, with the permissions it offers.",
    ),
    "scopes_not_allowed": _ErrorText(
        "Twitch granted more than this login asked for",
        "The tokens were revoked at once and nothing was stored: this proxy only keeps "
        "the permissions its front page offers. Start again without editing Twitch's "
        "address.",
    ),
    "scopes_narrowed": _ErrorText(
        "This login would take permissions away from your widgets",
        "Your existing connection and its proxy keys were left as they were. If you did "
        "not start this login yourself, you need do nothing. To drop permissions on "
        "purpose, revoke your key with Twitch tokens on the status page first, then "
        "connect again.",
        "Back to the front page",
    ),
}

_UPSTREAM_TEXT = _ErrorText(
    "Twitch is not answering right now",
    "Nothing was lost. Twitch did not answer in time or is having trouble; "
    "wait a minute and start again.",
    "Try again",
)
_STORE_TEXT = _ErrorText(
    "The proxy cannot reach its storage",
    "Nothing was lost on Twitch's side. Wait a minute and try again; if it keeps "
    "happening, tell whoever runs this proxy.",
    "Try again",
)
_OTHER_TEXT = _ErrorText(
    "Something went wrong",
    "Start again from this proxy's front page.",
)


def _error_text(exc: ProxyError) -> _ErrorText:
    if exc.code.startswith("upstream_"):
        return _UPSTREAM_TEXT
    if exc.code.startswith("store_"):
        return _STORE_TEXT
    return _ERROR_TEXTS.get(exc.code, _OTHER_TEXT)


def error_page(request: web.Request, exc: ProxyError) -> web.Response:
    """A page that says what went wrong and what to do next."""
    config = _config(request)
    text = _error_text(exc)
    advice = text.advice.replace("{ttl}", str(max(1, round(config.auth.state_ttl / 60))))
    retry_after = exc.headers().get("Retry-After")
    if retry_after:
        advice += f" (Twitch asked for at least {retry_after} seconds.)"
    response = render(
        request, "error.html", status=exc.status,
        heading=text.heading, message=exc.message, advice=advice,
        action_label=text.action_label, action_href=text.action_href,
        code=exc.code, http_status=exc.status,
    )
    response.headers.update(exc.headers())
    return response


def _grant_view(config: Config, status: dict[str, Any], now: float) -> _GrantView:
    last_refresh = status.get("last_refresh_at")
    last_validated = status.get("last_validated_at")
    return _GrantView(
        login=status["login"],
        user_id=status["user_id"],
        scopes=list(status["scopes"]),
        state=status["state"],
        active=status["state"] == ACTIVE,
        needs_reauth=status["state"] == NEEDS_REAUTH,
        token_expiry=_expiry(float(status["expires_in"]), now),
        last_refresh=_utc(last_refresh) if last_refresh else None,
        last_validated=_utc(last_validated) if last_validated else None,
        relogin_scopes=[scope for scope in status["scopes"]
                        if scope in config.twitch.allowed_scopes],
    )


def status_page(request: web.Request, status: dict[str, Any] | None, *,
                error: ProxyError | None = None) -> web.Response:
    """``/status``: a form to paste a key, and the grant's state once one was sent."""
    grant = None
    if error is None and status is not None:
        grant = _grant_view(_config(request), status, time.time())
    return render(request, "status.html", status=200 if error is None else error.status,
                  error=error, grant=grant)
