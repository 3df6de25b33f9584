"""Server-rendered HTML pages: landing, login result, status and errors.

Pages are plain HTML from the templates in ``proxy/templates`` (``string.Template``,
every value escaped here), one small stylesheet and one optional script under
``/static``; no build step, no CDN, usable without JavaScript (the script only
adds copy buttons). Every page gets the security headers of :func:`page_headers`.

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

import html
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from string import Template
from typing import Any

from aiohttp import web
from yarl import URL

from .app_keys import config_key
from .config import Config
from .errors import ProxyError
from .forwarded import public_url_for, redirect_uri_for
from .grants import ACTIVE, NEEDS_REAUTH

__all__ = [
    "PAGE_HEADERS",
    "SCOPE_DESCRIPTIONS",
    "callback_page",
    "error_page",
    "landing_page",
    "page_headers",
    "render",
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


@cache
def _template(name: str) -> Template:
    return Template(resources.files("proxy").joinpath("templates", name).read_text("utf-8"))


def render(request: web.Request, name: str, *, title: str, status: int = 200,
           **values: str) -> web.Response:
    """Render ``templates/<name>`` inside the base layout. Values must be escaped."""
    body = _template(name).substitute(values)
    page = _template("base.html").substitute(title=_e(title), body=body)
    return web.Response(status=status, text=page, content_type="text/html",
                        headers=page_headers(request.app[config_key]))


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


# --- small pieces ------------------------------------------------------------

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


def _time(timestamp: float) -> str:
    """A ``<time>`` element in UTC."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return (f'<time datetime="{moment.strftime("%Y-%m-%dT%H:%M:%SZ")}">'
            f'{moment.strftime("%Y-%m-%d %H:%M")} UTC</time>')


def _expiry(expires_in: float, now: float) -> str:
    if expires_in <= 0:
        return "expired; the proxy gets a new one on the next request"
    return f"in {_duration(expires_in)} (at {_time(now + expires_in)})"


def _scope_list(scopes: list[str] | tuple[str, ...]) -> str:
    if not scopes:
        return "none (public data only)"
    return " ".join(f"<code>{_e(scope)}</code>" for scope in scopes)


def _secret_block(element_id: str, label: str, value: str) -> str:
    """A secret hidden behind "show", with a copy button that page.js reveals."""
    return (
        f'<div class="secret">\n'
        f'<h3 id="{element_id}-label">{_e(label)}</h3>\n'
        f'<div class="row">\n'
        f'<details><summary>Show {_e(label.lower())}</summary>'
        f'<pre><code id="{element_id}">{_e(value)}</code></pre></details>\n'
        f'<button type="button" class="small copy" data-copy="{element_id}" hidden>'
        f'Copy {_e(label.lower())}</button>\n'
        f'</div>\n'
        f'<p class="copied" data-copied-for="{element_id}" role="status"></p>\n'
        f'</div>'
    )


def _copyable_block(element_id: str, label: str, value: str) -> str:
    """A value that is not secret: shown, with a copy button."""
    return (
        f'<div class="secret">\n'
        f'<h3 id="{element_id}-label">{_e(label)}</h3>\n'
        f'<div class="row">\n'
        f'<pre><code id="{element_id}">{_e(value)}</code></pre>\n'
        f'<button type="button" class="small copy" data-copy="{element_id}" hidden>'
        f'Copy {_e(label.lower())}</button>\n'
        f'</div>\n'
        f'<p class="copied" data-copied-for="{element_id}" role="status"></p>\n'
        f'</div>'
    )


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
    config = request.app[config_key]
    boxes = []
    for index, scope in enumerate(config.twitch.allowed_scopes):
        description = SCOPE_DESCRIPTIONS.get(scope)
        checked = " checked" if scope in config.twitch.scopes else ""
        text = f"<code>{_e(scope)}</code>"
        if description:
            text = f'<span class="scope-text">{_e(description)} {text}</span>'
        boxes.append(
            f'<li><label for="scope-{index}"><input type="checkbox" id="scope-{index}" '
            f'name="scope" value="{_e(scope)}"{checked}> {text}</label></li>'
        )
    return render(
        request, "landing.html", title="Connect Twitch",
        client_id=_e(config.twitch.client_id),
        scope_boxes="\n".join(boxes),
        default_scopes=_scope_list(config.twitch.scopes),
        public_url=_e(public_url_for(request)),
        redirect_uri=_e(redirect_uri_for(request)),
    )


def callback_page(request: web.Request, result: dict[str, Any]) -> web.Response:
    """The login result: key, tokens and snippet behind "show", each with a copy button."""
    public_url = public_url_for(request)
    return render(
        request, "callback.html", title="Connected",
        login=_e(result["login"]),
        user_id=_e(result["user_id"]),
        proxy_key_block=_secret_block("proxy-key", "Proxy key", result["proxy_key"]),
        proxy_url_block=_copyable_block("proxy-url", "Proxy URL", public_url),
        snippet_block=_secret_block(
            "snippet", "Widget code", widget_snippet(public_url, result["proxy_key"])
        ),
        access_token_block=_secret_block("access-token", "Access token",
                                         result["access_token"]),
        refresh_token_block=_secret_block("refresh-token", "Refresh token",
                                          result["refresh_token"]),
        scopes=_scope_list(result["scope"]),
        expiry=_expiry(float(result["expires_in"]), time.time()),
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
    config = request.app[config_key]
    text = _error_text(exc)
    advice = text.advice.replace("{ttl}", str(max(1, round(config.auth.state_ttl / 60))))
    retry_after = exc.headers().get("Retry-After")
    if retry_after:
        advice += f" (Twitch asked for at least {retry_after} seconds.)"
    response = render(
        request, "error.html", title=text.heading, status=exc.status,
        heading=_e(text.heading), message=_e(exc.message), advice=_e(advice),
        action_label=_e(text.action_label), action_href=_e(text.action_href),
        code=_e(exc.code), http_status=str(exc.status),
    )
    response.headers.update(exc.headers())
    return response


def _relogin_form(config: Config, scopes: list[str]) -> str:
    """GET /login with the grant's scopes (those still allowed): no key in the URL."""
    hidden = "".join(
        f'<input type="hidden" name="scope" value="{_e(scope)}">'
        for scope in scopes if scope in config.twitch.allowed_scopes
    )
    return (
        '<form method="get" action="/login">'
        f'{hidden}<button type="submit" class="primary">Log in again with Twitch</button>'
        '</form>'
    )


def status_page(request: web.Request, status: dict[str, Any] | None, *,
                error: ProxyError | None = None) -> web.Response:
    """``/status``: a form to paste a key, and the grant's state once one was sent."""
    config = request.app[config_key]
    now = time.time()
    result = ""
    if error is not None:
        result = (f'<div class="notice error" role="alert"><p>{_e(error.message)}</p>'
                  "<p>Check that you pasted the whole key. A key stops working when it is "
                  'revoked; <a href="/">connect again</a> to get a new one.</p></div>')
    elif status is not None:
        state = status["state"]
        if state == ACTIVE:
            state_text = '<span class="state-ok">Working</span>'
        elif state == NEEDS_REAUTH:
            state_text = '<span class="state-bad">Twitch no longer accepts this connection</span>'
        else:
            state_text = f'<span class="state-bad">{_e(state)}</span>'
        last_refresh = status.get("last_refresh_at")
        last_validated = status.get("last_validated_at")
        relogin = ""
        expiry = _expiry(float(status["expires_in"]), now)
        if state != ACTIVE:
            expiry = "unusable until you log in again"
            relogin = (
                '<div class="notice warning" role="alert">'
                "<p><strong>Log in again to fix this.</strong> Twitch stopped accepting this "
                "connection (the password was changed or the app was disconnected). Log in "
                "again with the same Twitch account: this key, and every widget that holds "
                "it, will work again.</p>"
                f"{_relogin_form(config, list(status['scopes']))}</div>"
            )
        result = (
            '<section class="card" aria-labelledby="result-heading">'
            '<h2 id="result-heading">This key</h2>'
            f"{relogin}"
            '<dl class="facts">'
            f"<dt>Twitch account</dt><dd>{_e(status['login'] or '(unknown)')}"
            f" (user id <code>{_e(status['user_id'])}</code>)</dd>"
            f"<dt>Permissions</dt><dd>{_scope_list(list(status['scopes']))}</dd>"
            f"<dt>State</dt><dd>{state_text}</dd>"
            f"<dt>Access token expires</dt><dd>{expiry}</dd>"
            f"<dt>Last refreshed</dt><dd>{_time(last_refresh) if last_refresh else 'not yet'}</dd>"
            f"<dt>Last checked with Twitch</dt>"
            f"<dd>{_time(last_validated) if last_validated else 'not yet'}</dd>"
            "</dl></section>"
        )
    return render(request, "status.html", title="Check a proxy key", result=result,
                  status=200 if error is None else error.status)
