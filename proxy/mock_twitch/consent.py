"""The consent page the mock shows when it does not auto-approve an authorize request.

A self-contained page (no scripts, no remote files) whose form posts the
user's decision back to ``/oauth2/authorize``.
"""

from __future__ import annotations

import html

from aiohttp import web

from .state import MockTwitch

__all__ = ["SCOPE_DESCRIPTIONS", "consent_page"]

# A few scopes get a human sentence on the consent page; the rest show their name.
SCOPE_DESCRIPTIONS = {
    "channel:read:subscriptions": "View a list of all subscribers to your channel",
    "user:write:chat": "Send chat messages as you",
    "user:read:chat": "Receive chat messages in channels you are in",
    "channel:manage:broadcast": "Manage your broadcast configuration",
    "moderator:read:followers": "Read the followers of a channel you moderate",
    "bits:read": "View Bits information for your channel",
}

# The authorize parameters the form carries back, so the decision can be checked
# and redirected exactly like the original request.
_CARRIED_PARAMS = ("client_id", "redirect_uri", "response_type", "scope", "state", "force_verify")

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Authorize {app} - Mock Twitch</title>
<style>
body {{ margin: 0; font-family: system-ui, sans-serif; background: #0e0e10; color: #efeff1; }}
main {{ max-width: 26rem; margin: 3rem auto; padding: 2rem; background: #18181b;
        border-radius: 0.5rem; }}
h1 {{ font-size: 1.25rem; }}
.brand {{ color: #bf94ff; font-weight: 700; }}
li {{ margin: 0.5rem 0; }}
code {{ color: #adadb8; }}
.buttons {{ display: flex; gap: 0.75rem; margin-top: 1.5rem; }}
button {{ flex: 1; padding: 0.6rem; font: inherit; font-weight: 600; border: 0;
          border-radius: 0.25rem; cursor: pointer; }}
button:focus-visible {{ outline: 3px solid #bf94ff; outline-offset: 2px; }}
.authorize {{ background: #9146ff; color: #fff; }}
.cancel {{ background: #2f2f35; color: #efeff1; }}
</style>
</head>
<body>
<main>
<p class="brand">Mock Twitch</p>
<h1>{app} wants to access your account</h1>
<p>Signed in as <strong>{user}</strong>.</p>
<h2 id="scopes-heading">This will allow {app} to:</h2>
<ul aria-labelledby="scopes-heading">
{scopes}
</ul>
<form method="post" action="/oauth2/authorize">
{hidden}
<div class="buttons">
<button type="submit" class="cancel" name="decision" value="cancel">Cancel</button>
<button type="submit" class="authorize" name="decision" value="authorize">Authorize</button>
</div>
</form>
</main>
</body>
</html>
"""


def consent_page(state: MockTwitch, params: dict[str, str]) -> web.Response:
    """The consent page for an authorize request's ``params``, as the signed-in user."""
    scopes = params.get("scope", "").split()
    scope_items = (
        "\n".join(
            f"<li>{html.escape(SCOPE_DESCRIPTIONS.get(scope, scope))} "
            f"<code>{html.escape(scope)}</code></li>"
            for scope in scopes
        )
        or "<li>Access your public account information</li>"
    )
    hidden = "\n".join(
        f'<input type="hidden" name="{name}" value="{html.escape(params[name])}">'
        for name in _CARRIED_PARAMS
        if name in params
    )
    user = state.users[state.signed_in_user_id]
    page = _PAGE.format(
        app=html.escape(state.app_name),
        user=html.escape(user.display_name),
        scopes=scope_items,
        hidden=hidden,
    )
    response = web.Response(text=page, content_type="text/html")
    # Proves the page needs nothing from elsewhere: no scripts, no remote files.
    response.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    return response
