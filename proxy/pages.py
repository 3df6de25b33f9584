"""Server-rendered HTML pages: landing, login result, status and errors.

Pages are plain HTML from the templates in ``proxy/templates`` (``string.Template``,
every value escaped here), one small stylesheet and one optional script under
``/static``; no build step, no CDN, usable without JavaScript. Every page gets
the security headers in :data:`PAGE_HEADERS`.
"""

from __future__ import annotations

import html
import json
from functools import cache
from importlib import resources
from string import Template
from typing import Any

from aiohttp import web

from .app_keys import config_key
from .errors import ProxyError

__all__ = ["PAGE_HEADERS", "callback_page", "error_page", "landing_page", "render",
           "status_page"]

#: Sent with every HTML page. The CSP allows no inline script or style, so an
#: injected tag cannot run; pages that show secrets are never cached or framed.
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


@cache
def _template(name: str) -> Template:
    return Template(resources.files("proxy").joinpath("templates", name).read_text("utf-8"))


def render(name: str, *, title: str, status: int = 200, **values: str) -> web.Response:
    """Render ``templates/<name>`` inside the base layout. Values must be escaped."""
    body = _template(name).substitute(values)
    page = _template("base.html").substitute(title=html.escape(title), body=body)
    return web.Response(status=status, text=page, content_type="text/html",
                        headers=PAGE_HEADERS)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def landing_page(request: web.Request) -> web.Response:
    """``/``: what this proxy is and a button to connect a Twitch account."""
    config = request.app[config_key]
    scope_boxes = "\n".join(
        f'<li><label><input type="checkbox" name="scope" value="{_e(s)}"'
        f'{" checked" if s in config.twitch.scopes else ""}> <code>{_e(s)}</code></label></li>'
        for s in config.twitch.allowed_scopes
    )
    return render(
        "landing.html", title="Twitch OAuth proxy",
        client_id=_e(config.twitch.client_id), scope_boxes=scope_boxes,
        public_url=_e(config.server.public_url),
    )


def callback_page(request: web.Request, result: dict[str, Any]) -> web.Response:
    """The login result: proxy key and tokens, hidden behind "show", with a snippet."""
    config = request.app[config_key]
    snippet = (
        f"const PROXY = {json.dumps(config.server.public_url)};\n"
        f"const KEY = {json.dumps(result['proxy_key'])};\n"
        "const res = await fetch(`${PROXY}/helix/users`, {\n"
        "  headers: { Authorization: `Bearer ${KEY}` },\n"
        "});\n"
        "const { data } = await res.json();"
    )
    return render(
        "callback.html", title="Connected",
        login=_e(result["login"]), user_id=_e(result["user_id"]),
        proxy_key=_e(result["proxy_key"]), access_token=_e(result["access_token"]),
        refresh_token=_e(result["refresh_token"]), expires_in=_e(result["expires_in"]),
        scope=_e(" ".join(result["scope"]) or "(none)"), snippet=_e(snippet),
    )


_ERROR_ADVICE = {
    "access_denied": "Nothing was stored. If you meant to connect, start again and "
                     "choose Authorize on Twitch.",
    "invalid_state": "Start the login again from this proxy's front page, in the same browser.",
    "forbidden": "Ask the operator of this proxy to allow your Twitch account.",
}


def error_page(request: web.Request, exc: ProxyError) -> web.Response:
    """A page that says what went wrong and what to do next."""
    if exc.status >= 500:
        advice = "Twitch could not be reached or failed. Wait a minute and try again."
    else:
        advice = _ERROR_ADVICE.get(exc.code, "Start again from this proxy's front page.")
    response = render(
        "error.html", title="Something went wrong", status=exc.status,
        code=_e(exc.code), message=_e(exc.message), advice=_e(advice),
    )
    response.headers.update(exc.headers())
    return response


def status_page(request: web.Request, status: dict[str, Any] | None, *,
                error: ProxyError | None = None) -> web.Response:
    """``/status``: a form to paste a key, and the grant's state once one was sent."""
    if status is None:
        result = ""
        if error is not None:
            result = f'<p class="error" role="alert">{_e(error.message)}</p>'
    else:
        expires = int(status["expires_in"])
        needs_login = status["state"] != "active"
        result = (
            '<section aria-labelledby="result"><h2 id="result">This key</h2><dl>'
            f"<dt>Twitch account</dt><dd>{_e(status['login'] or '(unknown)')}</dd>"
            f"<dt>Scopes</dt><dd><code>{_e(' '.join(status['scopes']) or '(none)')}</code></dd>"
            f"<dt>Access token expires in</dt><dd>{expires // 60} min {expires % 60} s</dd>"
            f"<dt>State</dt><dd>{'needs a new login' if needs_login else 'working'}</dd>"
            "</dl>"
            + ('<p class="warning" role="alert">Twitch no longer accepts this connection. '
               '<a class="button primary" href="/login">Log in again</a></p>'
               if needs_login else "")
            + "</section>"
        )
    return render("status.html", title="Proxy key status", result=result,
                  status=200 if error is None else error.status)
