"""``/helix/*``: Twitch's Helix API, with the credentials supplied by the proxy.

A widget calls ``<proxy>/helix/users?login=foo`` exactly as it would call
``https://api.twitch.tv/helix/users?login=foo``. This module:

1. checks the path stays under the Helix base (an allowlist of plain path
   segments: no dots, no encoded characters, no backslashes, no empty
   segments), before any upstream call;
2. works out the credential (:func:`resolve_credential`): a proxy key
   (``Bearer tpk_...``), an old widget's Twitch pair (``Bearer <access>`` plus
   ``X-Refresh-Token``), a bare Twitch token (passed through), or, when enabled,
   the app access token;
3. forwards the request with only the headers Helix needs, the configured
   Client-Id and the current access token;
4. on a 401 that means "token invalid or expired" refreshes once through
   :mod:`proxy.refresh` (shared by every concurrent request) and retries once
   with the buffered body; a 503 is retried once; a 429 gets ``Retry-After``;
5. answers Twitch's status and body, minus hop-by-hop headers and cookies.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
import zlib
from collections.abc import Mapping
from typing import Literal

from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from ...core.credential import Credential, bearer_token
from ...core.grant_cache import SharedAnswer
from ...core.grant_records import ACTIVE, Grant
from ...core.limits import acquire_upstream_slots, check_helix_allowed, release_upstream_slots
from ...core.sealed_index import PROXY_KEY_PREFIX
from ...errors import (
    HelixTransportError,
    InvalidPath,
    InvalidProxyKey,
    InvalidRequest,
    PayloadTooLarge,
)
from ...upstream.errors import check_gateway_answer, upstream_errors
from ...upstream.helix_client import HelixResponse
from ..keys import (
    abuse_guard_key,
    app_token_key,
    config_key,
    grant_cache_key,
    helix_client_key,
    metrics_key,
    ratelimit_gate_key,
    refresher_key,
    shared_gets_key,
    twitch_key,
)
from ..middleware.requestlog import note_grant, put_request_id

__all__ = ["classify_401", "helix_url_for", "resolve_credential", "setup_helix"]

log = logging.getLogger(__name__)

#: Request headers passed to Helix; everything else (cookies, Host, Origin,
#: X-Refresh-Token, the caller's Authorization) stays here.
FORWARDED_REQUEST_HEADERS = ("Accept", "Accept-Encoding", "Content-Type")

#: Response headers never passed back: hop-by-hop headers describe the
#: connection to Twitch, not ours; cookies are Twitch's, not the widget's;
#: CORS headers are the proxy's own business; Server and Date are set by us;
#: the old widgets' token headers are only ever the proxy's, for one caller.
DROPPED_RESPONSE_HEADERS = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE",
    "Trailer", "Transfer-Encoding", "Upgrade", "Set-Cookie", "Server", "Date",
    "X-Access-Token", "X-Refresh-Token",
    "Access-Control-Allow-Origin", "Access-Control-Allow-Credentials",
    "Access-Control-Expose-Headers", "Access-Control-Allow-Headers",
    "Access-Control-Allow-Methods", "Access-Control-Max-Age",
))

#: Helix paths are plain words separated by single slashes.
_SAFE_PATH = re.compile(r"[A-Za-z0-9_\-]+(?:/[A-Za-z0-9_\-]+)*")

#: Bodies up to this size are read whole (fast path); larger ones are streamed.
_WHOLE_BODY_LIMIT = 64 * 1024

#: 401 messages after which a refresh helps, and those after which it cannot.
_REFRESHABLE_401 = ("invalid oauth token", "invalid access token", "token is expired",
                    "expired")
_FINAL_401 = ("missing scope", "client id and oauth token do not match",
              "oauth token is missing", "missing user oauth token")


@functools.lru_cache(maxsize=8)
def _base_path(base: str) -> str:
    """``/helix/`` for ``https://api.twitch.tv/helix`` (parsed once, not per request)."""
    return URL(base).path.rstrip("/") + "/"


def helix_url_for(base: str, path: str, raw_query: str) -> URL:
    """The upstream URL, or InvalidPath when ``path`` could leave ``base``.

    ``path`` is the raw (still percent-encoded) part after ``/helix/``; the
    query string is kept byte for byte (order, repeated keys, encoding).
    """
    if not _SAFE_PATH.fullmatch(path):
        raise InvalidPath("The Helix path may only contain letters, digits, '-', '_' and "
                          "single '/' between them.")
    url = URL(f"{base}/{path}" + (f"?{raw_query}" if raw_query else ""), encoded=True)
    if not url.path.startswith(_base_path(base)):
        raise InvalidPath("The Helix path leaves the Helix API.")  # pragma: no cover
    return url


def classify_401(body: bytes, content_encoding: str = "") -> Literal["refresh", "final", "unknown"]:
    """Whether a Helix 401 means "refresh the token" (Twitch's documented 401 messages)."""
    try:
        if content_encoding in ("gzip", "deflate"):
            body = zlib.decompress(body, 47)  # 47: auto-detect gzip or zlib header
        message = str(json.loads(body).get("message", "")).lower()
    except (ValueError, AttributeError, zlib.error):
        return "unknown"
    if any(text in message for text in _FINAL_401):
        return "final"
    if any(text in message for text in _REFRESHABLE_401):
        return "refresh"
    return "unknown"


async def resolve_credential(request: web.Request) -> Credential:
    """The credential a request brings (see the module docstring)."""
    authorization = request.headers.get("Authorization", "")
    config = request.app[config_key]
    if not authorization:
        if config.helix.app_token:
            return Credential("app", await request.app[app_token_key].token())
        raise InvalidRequest("Send Authorization: Bearer <proxy key>.",
                             login_url=config.server.login_url)
    token = bearer_token(authorization)
    if token is None:
        raise InvalidRequest("The Authorization header must be 'Bearer <proxy key or token>'.")
    # Key and alias lookups come from the in-process grant cache
    # (proxy.cache): no store round trip while nothing changed.
    grants = request.app[grant_cache_key]
    if token.startswith(PROXY_KEY_PREFIX):
        grant = await grants.grant_for_key(token)
        if grant is None:
            raise InvalidProxyKey("This proxy key is unknown or was revoked.")
        fresh = await _fresh(request, grant)
        return Credential("key", fresh.access_token, fresh)
    refresh_token = request.headers.get("X-Refresh-Token", "").strip()
    if refresh_token:
        grant = await grants.alias_grant(refresh_token)
        if grant is None:
            grant = await _open_old_pair(request, token, refresh_token)
        # An alias opens its own chain only, even if a login replaces it meanwhile.
        fresh = await _fresh(request, grant, chain=grant.chain)
        return Credential("legacy", fresh.access_token, fresh)
    credential = Credential("passthrough", token)
    # Junk bare tokens would each cost a call to Twitch: see check_bare_token.
    request.app[abuse_guard_key].check_bare_token(credential.bucket, request)
    return credential


async def _fresh(request: web.Request, grant: Grant, *, chain: str | None = None) -> Grant:
    """``grant`` refreshed when due, and remembered by the grant cache if it was."""
    fresh = await request.app[refresher_key].ensure_fresh(grant, chain=chain)
    if fresh is not grant:
        request.app[grant_cache_key].remember(fresh)
    return fresh


async def _open_old_pair(request: web.Request, access_token: str, refresh_token: str) -> Grant:
    """The grant an old widget's pair opens; an unknown pair is proven at Twitch first.

    Proving costs Twitch a validate and a refresh made with our client secret,
    so it spends from the caller's ``POST /refresh`` rate limit and holds a
    slot of the total concurrency, as ``POST /refresh`` does.
    """
    grants = request.app[grant_cache_key]
    refresher = request.app[refresher_key]
    epoch = grants.epoch
    found = await refresher.open_alias(refresh_token)
    if found is None:
        guard = request.app[abuse_guard_key]
        guard.spend("refresh", request)
        await guard.take_total_slot()
        try:
            found = await refresher.prove_pair(access_token, refresh_token)
        finally:
            guard.total.release("")
    grant, ref = found
    if ref is not None:
        grants.remember_alias(refresh_token, ref, grant, epoch)
    return grant


async def _read_body(request: web.Request) -> bytes:
    """The request body, buffered so a retry sends the same bytes."""
    limit = request.app[config_key].helix.max_body
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"The body is larger than {limit} bytes.")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"The body is larger than {limit} bytes.") from None
    if len(body) > limit:
        raise PayloadTooLarge(f"The body is larger than {limit} bytes.")
    return body


def _upstream_headers(request: web.Request, client_id: str,
                      token: str) -> list[tuple[str, str]]:
    incoming = request.headers
    headers = [(name, incoming[name]) for name in FORWARDED_REQUEST_HEADERS if name in incoming]
    headers.append(("Client-Id", client_id))
    headers.append(("Authorization", f"Bearer {token}"))
    return headers


def _response_headers(upstream: Mapping[str, str]) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        if name.lower() not in DROPPED_RESPONSE_HEADERS:
            headers.add(name, value)
    return headers


def _retry_after(headers: Mapping[str, str]) -> str:
    """Seconds until the Helix rate-limit bucket refills (at least 1)."""
    try:
        reset = float(headers["Ratelimit-Reset"])
    except (KeyError, ValueError):
        return "1"
    return str(max(1, int(reset - time.time() + 0.999)))


async def helix_proxy(request: web.Request) -> web.StreamResponse:
    """Forward one request to Helix; refresh once and retry on an expired token."""
    app = request.app
    config = app[config_key]
    # The raw path: percent-escapes must reach the allowlist still escaped.
    path = request.rel_url.raw_path.removeprefix("/helix/")
    url = helix_url_for(config.twitch.helix_url.rstrip("/"), path,
                        request.rel_url.raw_query_string)
    check_helix_allowed(request, path)  # helix.allow: 403 before any credential work
    credential = await resolve_credential(request)
    note_grant(credential.grant.grant_id if credential.grant else None,
               bucket="app" if credential.mode == "app" else None)  # request log, metrics
    body = await _read_body(request) if request.can_read_body else b""
    if request.method == "GET" and not body:
        return await _shared_get(request, url, "/" + path, credential)
    return await _forward(request, url, credential, body)


async def _shared_get(request: web.Request, url: URL, path: str,
                      credential: Credential) -> web.Response:
    """A GET answered by one upstream call shared with identical concurrent GETs.

    Identical means same credential mode and grant (or bare token), URL,
    Accept and Accept-Encoding; the answer is read whole before anyone gets a
    copy. ``helix.cache`` may keep it for a few seconds (see :mod:`proxy.cache`).
    The shared answer never carries a credential: each caller's own headers
    (an old widget's current pair) are added to its own copy only.
    """
    headers = request.headers
    key = (credential.mode,
           credential.bucket if credential.grant is None else credential.grant.grant_id,
           str(url), headers.get("Accept"), headers.get("Accept-Encoding"))

    own: list[web.Response] = []

    async def fetch() -> SharedAnswer:
        response = await _forward(request, url, credential, b"", whole=True, shared=True)
        assert isinstance(response, web.Response) and isinstance(response.body, bytes)
        own.append(response)
        # Its live headers: SharedGets copies them only if someone else needs them.
        return SharedAnswer(response.status, response.headers, response.body)

    answer, _ = await request.app[shared_gets_key].fetch(key, path, fetch)
    if own:
        response = own[0]  # this request made the call: its response needs no copy
    else:
        response = web.Response(status=answer.status, body=answer.body,
                                headers=CIMultiDict(answer.headers))
    if credential.mode == "legacy":
        # The grant as of now (the call may have refreshed it for everyone), but
        # only while it is on the chain this caller's refresh token opened: a
        # login meanwhile must not hand the new chain to an old widget's pair.
        assert credential.grant is not None
        grants = request.app[grant_cache_key]
        current = await grants.cached_grant(credential.grant.grant_id)
        if current is not None and current.chain == credential.grant.chain \
                and current.state == ACTIVE:
            _credential_headers(response, Credential("legacy", current.access_token, current))
    return response


async def _forward(request: web.Request, url: URL, credential: Credential, body: bytes,
                   *, whole: bool = False, shared: bool = False) -> web.StreamResponse:
    """Call Helix (refresh once on 401, retry a 503 once) and answer what it said.

    ``whole`` reads the answer completely instead of streaming large ones;
    ``shared`` leaves the caller's credential headers out of it (the caller
    adds its own: see :func:`_shared_get`).
    """
    # Concurrency limits (total: 503, per grant: 429) count calls to Twitch.
    slot = await acquire_upstream_slots(request, credential)
    try:
        return await _call_helix(request, url, credential, body, whole=whole, shared=shared)
    finally:
        release_upstream_slots(request, slot)


async def _call_helix(request: web.Request, url: URL, credential: Credential, body: bytes,
                      *, whole: bool, shared: bool) -> web.StreamResponse:
    app = request.app
    bucket = credential.bucket
    config = app[config_key]
    client = app[helix_client_key]
    gate = app[ratelimit_gate_key]
    metrics = app[metrics_key]
    retried_401 = retried_503 = False
    while True:
        await gate.wait_turn(bucket)  # an empty bucket: wait for Ratelimit-Reset, or 429
        started = time.perf_counter()
        try:
            with upstream_errors():
                upstream = await client.request(
                    request.method, url,
                    _upstream_headers(request, config.twitch.client_id, credential.access_token),
                    body)
        except BaseException:
            metrics.upstream_answer("helix", None, time.perf_counter() - started)
            raise
        metrics.upstream_answer("helix", upstream.status, time.perf_counter() - started,
                                upstream.headers.get("Ratelimit-Remaining"))
        gate.observe(bucket, upstream.status, upstream.headers)
        if credential.mode == "passthrough":
            app[abuse_guard_key].bare_token_answered(credential.bucket,
                                                     accepted=upstream.status != 401)
        try:
            if upstream.status == 401 and not retried_401 and credential.mode != "passthrough":
                with upstream_errors():
                    payload = await upstream.read()
                renewed = await _after_401(request, credential, payload,
                                           upstream.headers.get("Content-Encoding", ""))
                if renewed is None:
                    return _answer(upstream, payload, None if shared else credential)
                retried_401, credential = True, renewed
                continue
            if upstream.status == 503 and not retried_503:
                retried_503 = True  # Twitch's guide: retry a 503 once
                await asyncio.sleep(0.1)
                continue
            check_gateway_answer(upstream.status, upstream.content_type)  # an HTML 5xx page
            return await _relay(request, upstream, None if shared else credential,
                                whole=whole)
        finally:
            upstream.release()


async def _after_401(request: web.Request, credential: Credential, payload: bytes,
                     content_encoding: str) -> Credential | None:
    """The credential to retry with, or None to pass the 401 on."""
    kind = classify_401(payload, content_encoding)
    if kind == "final":
        return None
    if kind == "unknown":
        # Twitch asks clients not to rely on messages: /validate decides.
        if await request.app[twitch_key].validate(credential.access_token) is not None:
            return None
    if credential.mode == "app":
        token = await request.app[app_token_key].renew(credential.access_token)
        return Credential("app", token)
    assert credential.grant is not None
    # A key follows its grant to a new chain; an old widget's pair stays on its own.
    grant = await request.app[refresher_key].refresh(
        credential.grant.grant_id, stale_access_token=credential.access_token,
        chain=credential.grant.chain if credential.mode == "legacy" else None)
    return Credential(credential.mode, grant.access_token, grant)


def _credential_headers(response: web.StreamResponse, credential: Credential | None) -> None:
    """Old widgets may read the grant's current pair from these headers."""
    if credential is not None and credential.mode == "legacy" and credential.grant is not None:
        response.headers["X-Access-Token"] = credential.grant.access_token
        response.headers["X-Refresh-Token"] = credential.grant.refresh_token
        response.headers["Cache-Control"] = "no-store"


def _answer(upstream: HelixResponse, payload: bytes,
            credential: Credential | None) -> web.Response:
    """Twitch's answer with a body already read."""
    headers = _response_headers(upstream.headers)
    headers.pop("Content-Length", None)
    if upstream.status == 429:
        headers["Retry-After"] = _retry_after(upstream.headers)
    response = web.Response(status=upstream.status, body=payload, headers=headers)
    _credential_headers(response, credential)
    return response


async def _relay(request: web.Request, upstream: HelixResponse,
                 credential: Credential | None, *, whole: bool = False) -> web.StreamResponse:
    """Pass Twitch's answer on: whole when small (or ``whole``), else streamed."""
    length = upstream.content_length
    if whole or (length is not None and length <= _WHOLE_BODY_LIMIT):
        with upstream_errors():
            payload = await upstream.read()
        return _answer(upstream, payload, credential)
    headers = _response_headers(upstream.headers)
    if upstream.status == 429:
        headers["Retry-After"] = _retry_after(upstream.headers)
    response = web.StreamResponse(status=upstream.status, headers=headers)
    _credential_headers(response, credential)
    put_request_id(request, response)  # prepared here, not by the request middleware
    await response.prepare(request)
    try:
        async for chunk in upstream.iter_chunks():
            await response.write(chunk)
    except (HelixTransportError, TimeoutError):
        # The status line is gone already: cut the connection so the client
        # sees a broken response instead of a silently truncated one.
        log.warning("upstream body broke off after the headers were sent; closing")
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response


def setup_helix(app: web.Application) -> None:
    """Register ``/helix/{path}`` for each method Helix uses.

    Each method is added on its own: aiohttp-cors cannot add a ``*`` route.
    """
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        app.router.add_route(method, "/helix/{path:.*}", helix_proxy)


