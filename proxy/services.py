"""Every service the proxy runs on, built from one :class:`~proxy.config.Config`, once.

The web app (:mod:`proxy.web.app`), the admin commands (:mod:`proxy.admin`) and
the benchmark build their services here and nowhere else, so they talk to the
same store, with the same cipher and caches, in the same way.

:class:`Services` is made in two steps. Its constructor builds what lives in
memory only (metrics, request ids, the abuse guard, Twitch's rate-limit gate,
the shared GETs), so the web app can hand those to its middlewares and
handlers when it is built, before anything is opened. :meth:`Services.opened`
then opens the rest, in this order, and closes it in reverse (only what was
opened): the cipher (a refused key file leaves nothing open), the HTTP session
for Twitch's OAuth endpoints and the Helix client, the token store, the grant
store on it (with the key check), the Twitch OAuth client, the refresher, the
app token provider, the Helix caller (:mod:`proxy.core.helix_call`) and the
validator (built, not started: the web app runs it).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from .config import Config
from .config.encryption_keys import parse_keys
from .config.store_url import sqlite_path
from .core.app_token import AppTokenProvider
from .core.credential import Credential
from .core.grant_cache import CachedGrantStore
from .core.helix_call import HelixCaller
from .core.limits import AbuseGuard
from .core.refresh import Refresher
from .core.relay.access import StreamAccess
from .core.validator import Validator
from .errors import StoreUnavailable
from .store import open_store
from .store.base import TokenStore
from .store.crypto import Cipher, FernetCipher, PlainCipher, load_or_create_key_file
from .telemetry.context import RequestIds
from .telemetry.metrics import Metrics
from .upstream.helix_client import HelixClient
from .upstream.ratelimit import RateLimitGate
from .upstream.shared_gets import SharedGets
from .upstream.twitch import TwitchClient

__all__ = ["Services", "cipher_for", "open_services"]

log = logging.getLogger(__name__)

#: Seconds an idle connection to Twitch is kept open for the next call.
KEEPALIVE = 30


def cipher_for(config: Config) -> Cipher:
    """The cipher that protects grant records in the configured store."""
    url = config.store.url
    if config.store.encryption_key:
        return FernetCipher(parse_keys(config.store.encryption_key))
    if url.startswith("sqlite://"):
        return FernetCipher([load_or_create_key_file(Path(sqlite_path(url)))])
    return PlainCipher()  # memory:// (Redis without a key is refused by config)


class Services:
    """The proxy's services (see the module docstring for what is built when)."""

    # Opened by :meth:`opened`, in this order.
    cipher: Cipher
    http_session: aiohttp.ClientSession
    helix_client: HelixClient
    store: TokenStore
    grants: CachedGrantStore
    twitch: TwitchClient
    refresher: Refresher
    app_token: AppTokenProvider
    helix_caller: HelixCaller
    validator: Validator
    stream_access: StreamAccess

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.request_ids = RequestIds()
        self.abuse_guard = AbuseGuard(config.limits, config.helix.allow)
        self.ratelimit_gate = RateLimitGate(max_wait=config.helix.ratelimit_wait)
        self.shared_gets = SharedGets(config.helix.cache)

    @contextlib.asynccontextmanager
    async def opened(self, *, check_store_key: bool = True) -> AsyncIterator[Services]:
        """Open every service, yield, then close them in reverse order.

        ``check_store_key`` checks the encryption key against the store first
        (a wrong key fails with one clear error) and warns about index entries
        not sealed with it; the admin commands leave it to the command.
        """
        config = self.config
        async with contextlib.AsyncExitStack() as opened:
            self.cipher = cipher_for(config)
            self.http_session = await opened.enter_async_context(_twitch_session(config))
            # /helix's calls go through a leaner client of their own.
            self.helix_client = HelixClient(pool_size=config.helix.pool_size,
                                            timeout=config.twitch.timeout,
                                            keepalive=KEEPALIVE)
            opened.push_async_callback(self.helix_client.close)
            self.store = await open_store(config.store.url, prefix=config.store.prefix)
            opened.push_async_callback(self.store.close)
            # Hot-path lookups from memory, invalidated across processes.
            self.grants = CachedGrantStore(self.store, self.cipher,
                                           poll_interval=config.store.cache_poll)
            if check_store_key:
                await _check_store_key(self.grants)
            self.twitch = TwitchClient(self.http_session, config.twitch,
                                       observe=self.metrics.upstream_answer)
            self.refresher = Refresher(
                self.grants, self.twitch, replay_window=config.auth.replay_window,
                on_outcome=self.metrics.refresh_outcome,
                login_url=config.server.login_url, lock_lease=config.store.lock_lease,
            )
            opened.push_async_callback(self.refresher.aclose)
            self.app_token = AppTokenProvider(self.twitch)
            self.helix_caller = HelixCaller(
                self.helix_client, self.ratelimit_gate, self.twitch, self.refresher,
                self.app_token, client_id=config.twitch.client_id, observe=self._helix_answered)
            self.validator = Validator(
                self.grants, self.twitch, self.refresher,
                interval=config.auth.validate_interval,
                on_outcome=self.metrics.validation_outcome,
                purge_after=config.auth.purge_needs_reauth_after,
                on_purged=self.metrics.grant_purged)
            # Open live-event streams, ended when their key or grant is revoked.
            self.stream_access = StreamAccess(self.grants.grant_for_key,
                                              login_url=config.server.login_url)
            yield self

    def _helix_answered(self, credential: Credential, status: int | None, seconds: float,
                        remaining: str | None) -> None:
        """Count a Helix answer; remember whether Twitch accepted a bare token."""
        self.metrics.upstream_answer("helix", status, seconds, remaining)
        if status is not None and credential.mode == "passthrough":
            self.abuse_guard.bare_token_answered(credential.bucket, accepted=status != 401)


def open_services(config: Config, *,
                  check_store_key: bool = True) -> contextlib.AbstractAsyncContextManager[Services]:
    """``async with open_services(config) as services``: see :meth:`Services.opened`."""
    return Services(config).opened(check_store_key=check_store_key)


def _twitch_session(config: Config) -> aiohttp.ClientSession:
    """The HTTP session for Twitch's OAuth endpoints."""
    connector = aiohttp.TCPConnector(limit=config.helix.pool_size,
                                     limit_per_host=config.helix.pool_size, ttl_dns_cache=300,
                                     keepalive_timeout=KEEPALIVE)
    return aiohttp.ClientSession(
        connector=connector,
        # No cookies from Twitch ever reach another widget's request.
        cookie_jar=aiohttp.DummyCookieJar(),
        # Bodies are passed on as they came; the OAuth client asks for
        # identity encoding because it parses its answers.
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=config.twitch.timeout),
    )


async def _check_store_key(grants: CachedGrantStore) -> None:
    """Fail on a wrong encryption key; warn about index entries it does not seal."""
    try:
        await grants.check_cipher()
        unsealed = await grants.unsealed_entries()
    except StoreUnavailable:
        return  # not reachable yet: /readyz says so, and reads check the key later
    if unsealed:
        log.warning("%d index entries (proxy keys, refresh tokens, users) are not sealed "
                    "with this store's key and open nothing; if a version before sealing "
                    "wrote them, run `twitch-proxy grants reencrypt` once", unsealed)
