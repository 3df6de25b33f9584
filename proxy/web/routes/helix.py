"""``/helix/*``: Twitch's Helix API, with the credentials supplied by the proxy.

A widget calls ``<proxy>/helix/users?login=foo`` exactly as it would call
``https://api.twitch.tv/helix/users?login=foo``. :class:`HelixRoute`:

1. checks the path stays under the Helix base (an allowlist of plain path
   segments: no dots, no encoded characters, no backslashes, no empty
   segments), and ``helix.allow``, before any upstream call;
2. works out the credential (:meth:`HelixRoute.resolve_credential`): a proxy key
   (``Bearer tpk_...``), an old widget's Twitch pair (``Bearer <access>`` plus
   ``X-Refresh-Token``), a bare Twitch token (passed through), or, when enabled,
   the app access token;
3. lets identical concurrent GETs share one upstream call (:mod:`proxy.upstream.shared_gets`);
4. sends the request with only the headers Helix needs through
   :class:`proxy.core.helix_call.HelixCaller` (the retry policy: refresh once on
   an expired token, retry a 503 once, wait on an empty rate-limit bucket),
   holding a slot of the proxy's concurrency limits meanwhile;
5. answers Twitch's status and body, minus hop-by-hop headers and cookies; a
   429 gets ``Retry-After``; an HTML 5xx page from a gateway becomes the
   proxy's own JSON error.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Mapping

from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from ...core.credential import Credential, bearer_token
from ...core.grant_records import ACTIVE, Grant
from ...core.helix_call import HelixAnswer, HelixRequest
from ...core.sealed_index import PROXY_KEY_PREFIX
from ...errors import (
    HelixTransportError,
    InvalidPath,
    InvalidProxyKey,
    InvalidRequest,
    PayloadTooLarge,
)
from ...services import Services
from ...telemetry.context import note_grant
from ...upstream.errors import check_gateway_answer, upstream_errors
from ...upstream.helix_client import HelixResponse
from ...upstream.shared_gets import SharedAnswer
from ..forwarded import client_address
from ..middleware.requestlog import put_request_id

__all__ = ["DROPPED_RESPONSE_HEADERS", "FORWARDED_REQUEST_HEADERS", "HelixRoute",
           "helix_url_for", "setup_helix"]

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


class HelixRoute:
    """The ``/helix/{path}`` handler, holding the app's services (see the module docstring)."""

    def __init__(self, services: Services) -> None:
        self._services = services
        config = services.config
        self._base = config.twitch.helix_url.rstrip("/")
        self._server = config.server
        self._max_body = config.helix.max_body
        self._app_token_allowed = config.helix.app_token

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Forward one request to Helix and answer what Twitch said."""
        # The raw path: percent-escapes must reach the allowlist still escaped.
        path = request.rel_url.raw_path.removeprefix("/helix/")
        url = helix_url_for(self._base, path, request.rel_url.raw_query_string)
        # helix.allow: 403 before any credential work
        self._services.abuse_guard.check_helix_allowed(request.method, path)
        credential = await self.resolve_credential(request)
        note_grant(credential.grant.grant_id if credential.grant else None,
                   bucket="app" if credential.mode == "app" else None)  # request log, metrics
        body = await self._read_body(request) if request.can_read_body else b""
        if request.method == "GET" and not body:
            return await self._shared_get(request, url, "/" + path, credential)
        return await self._forward(request, url, credential, body)

    # -- the credential ------------------------------------------------------------------

    async def resolve_credential(self, request: web.Request) -> Credential:
        """The credential a request brings (see the module docstring)."""
        services = self._services
        authorization = request.headers.get("Authorization", "")
        if not authorization:
            if self._app_token_allowed:
                return Credential("app", await services.app_token.token())
            raise InvalidRequest("Send Authorization: Bearer <proxy key>.",
                                 login_url=self._server.login_url)
        token = bearer_token(authorization)
        if token is None:
            raise InvalidRequest("The Authorization header must be 'Bearer <proxy key or token>'.")
        # Key and alias lookups come from the in-process grant cache
        # (proxy.core.grant_cache): no store round trip while nothing changed.
        grants = services.grants
        if token.startswith(PROXY_KEY_PREFIX):
            grant = await grants.grant_for_key(token)
            if grant is None:
                raise InvalidProxyKey("This proxy key is unknown or was revoked.")
            fresh = await self._fresh(grant)
            return Credential("key", fresh.access_token, fresh)
        refresh_token = request.headers.get("X-Refresh-Token", "").strip()
        if refresh_token:
            grant = await grants.alias_grant(refresh_token)
            if grant is None:
                grant = await self._open_old_pair(request, token, refresh_token)
            # An alias opens its own chain only, even if a login replaces it meanwhile.
            fresh = await self._fresh(grant, chain=grant.chain)
            return Credential("legacy", fresh.access_token, fresh)
        credential = Credential("passthrough", token)
        # Junk bare tokens would each cost a call to Twitch: see check_bare_token.
        services.abuse_guard.check_bare_token(credential.bucket,
                                              client_address(request, self._server))
        return credential

    async def _fresh(self, grant: Grant, *, chain: str | None = None) -> Grant:
        """``grant`` refreshed when due, and remembered by the grant cache if it was."""
        fresh = await self._services.refresher.ensure_fresh(grant, chain=chain)
        if fresh is not grant:
            self._services.grants.remember(fresh)
        return fresh

    async def _open_old_pair(self, request: web.Request, access_token: str,
                             refresh_token: str) -> Grant:
        """The grant an old widget's pair opens; an unknown pair is proven at Twitch first.

        Proving costs Twitch a validate and a refresh made with our client secret,
        so it spends from the caller's ``POST /refresh`` rate limit and holds a
        slot of the total concurrency, as ``POST /refresh`` does.
        """
        grants = self._services.grants
        refresher = self._services.refresher
        epoch = grants.epoch
        found = await refresher.open_alias(refresh_token)
        if found is None:
            guard = self._services.abuse_guard
            guard.spend("refresh", client_address(request, self._server))
            await guard.take_total_slot()
            try:
                found = await refresher.prove_pair(access_token, refresh_token)
            finally:
                guard.total.release("")
        grant, ref = found
        if ref is not None:
            grants.remember_alias(refresh_token, ref, grant, epoch)
        return grant

    async def _read_body(self, request: web.Request) -> bytes:
        """The request body, buffered so a retry sends the same bytes."""
        limit = self._max_body
        if request.content_length is not None and request.content_length > limit:
            raise PayloadTooLarge(f"The body is larger than {limit} bytes.")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise PayloadTooLarge(f"The body is larger than {limit} bytes.") from None
        if len(body) > limit:
            raise PayloadTooLarge(f"The body is larger than {limit} bytes.")
        return body

    # -- the call --------------------------------------------------------------------------

    async def _shared_get(self, request: web.Request, url: URL, path: str,
                          credential: Credential) -> web.Response:
        """A GET answered by one upstream call shared with identical concurrent GETs.

        Identical means same credential mode and grant (or bare token), URL,
        Accept and Accept-Encoding; the answer is read whole before anyone gets a
        copy. ``helix.cache`` may keep it for a few seconds. The shared answer
        never carries a credential: each caller's own headers (an old widget's
        current pair) are added to its own copy only.
        """
        headers = request.headers
        key = (credential.mode,
               credential.bucket if credential.grant is None else credential.grant.grant_id,
               str(url), headers.get("Accept"), headers.get("Accept-Encoding"))

        own: list[web.Response] = []

        async def fetch() -> SharedAnswer:
            response = await self._forward(request, url, credential, b"", whole=True,
                                           shared=True)
            assert isinstance(response, web.Response) and isinstance(response.body, bytes)
            own.append(response)
            # Its live headers: SharedGets copies them only if someone else needs them.
            return SharedAnswer(response.status, response.headers, response.body)

        answer, _ = await self._services.shared_gets.fetch(key, path, fetch)
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
            current = await self._services.grants.cached_grant(credential.grant.grant_id)
            if current is not None and current.chain == credential.grant.chain \
                    and current.state == ACTIVE:
                _credential_headers(response, Credential("legacy", current.access_token,
                                                         current))
        return response

    async def _forward(self, request: web.Request, url: URL, credential: Credential,
                       body: bytes, *, whole: bool = False,
                       shared: bool = False) -> web.StreamResponse:
        """Call Helix under the retry policy and answer what it said.

        ``whole`` reads the answer completely instead of streaming large ones;
        ``shared`` leaves the caller's credential headers out of it (the caller
        adds its own: see :meth:`_shared_get`).
        """
        incoming = request.headers
        call = HelixRequest(request.method, url,
                            [(name, incoming[name]) for name in FORWARDED_REQUEST_HEADERS
                             if name in incoming], body)
        guard = self._services.abuse_guard
        bucket = credential.bucket
        # Concurrency limits (total: 503, per grant: 429) count calls to Twitch.
        await guard.acquire_upstream(bucket)
        try:
            answer = await self._services.helix_caller.call(call, credential)
            try:
                return await _respond(request, answer, whole=whole, shared=shared)
            finally:
                answer.response.release()
        finally:
            guard.release_upstream(bucket)


async def _respond(request: web.Request, answer: HelixAnswer, *, whole: bool,
                   shared: bool) -> web.StreamResponse:
    """Twitch's answer as the widget gets it."""
    upstream = answer.response
    credential = None if shared else answer.credential
    if answer.body is not None:
        return _answer(upstream, answer.body, credential)
    check_gateway_answer(upstream.status, upstream.content_type)  # an HTML 5xx page
    return await _relay(request, upstream, credential, whole=whole)


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


def setup_helix(app: web.Application, services: Services) -> None:
    """Register ``/helix/{path}`` for each method Helix uses.

    Each method is added on its own: aiohttp-cors cannot add a ``*`` route.
    """
    route = HelixRoute(services)
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        app.router.add_route(method, "/helix/{path:.*}", route.handle)
