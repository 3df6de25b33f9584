"""Serving the app: one process, or a gunicorn master with N worker processes.

``serve(config)`` is what ``twitch-proxy`` runs:

- ``server.workers == 1`` (the default): aiohttp's own runner in this process.
- ``server.workers > 1`` (``WEB_CONCURRENCY`` / ``--workers``): a gunicorn
  master forks N workers running aiohttp's ``GunicornWebWorker``, all
  accepting on the one listening socket the master bound. Gunicorn rather
  than home-made forking with SO_REUSEPORT because it already does what a
  platform expects of a web process: it restarts a worker that dies, turns
  SIGTERM into a graceful stop of every worker, and kills the stragglers
  after the grace period. Workers share nothing but the store, which is why
  the memory store is refused with more than one worker (config validation).

Either way SIGTERM (what Heroku-style platforms send before a restart) stops
accepting, lets in-flight requests, including a refresh in progress, finish
within ``server.shutdown_grace`` seconds, closes the store and the HTTP session
(the app's ``cleanup_ctx``) and exits 0. ``server.tls_cert`` / ``server.tls_key``
serve https directly.

Once the app has started, everything made so far (modules, config, routes,
the store's connections) is moved out of the garbage collector's sight
(:func:`freeze_startup_heap`): a full collection then walks only what requests
made, which keeps its pauses out of the latency tail (the benchmark's scenario
1: p99 from about 1.6 x the reference forwarder's to below it).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .config import Config
from .web.app import create_app

__all__ = ["serve", "ssl_context"]

log = logging.getLogger("proxy")

#: The aiohttp worker gives in-flight requests 95 % of gunicorn's graceful
#: timeout; this keeps the configured grace the real one.
_WORKER_GRACE_SHARE = 0.95


def ssl_context(config: Config) -> ssl.SSLContext | None:
    """The server TLS context when ``server.tls_cert`` is set, else None."""
    if not config.server.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.server.tls_cert, config.server.tls_key)
    return context


def serve(config: Config, app: web.Application | Awaitable[web.Application] | None = None, *,
          banner: str | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then finish in-flight requests and return.

    ``app`` defaults to ``create_app(config)``; ``--mock-twitch`` passes one
    with the mock attached (one worker only: its state lives in this process).
    """
    if config.server.workers > 1:
        if app is not None:
            raise ValueError("a prepared app can only be served by one worker")
        _serve_with_gunicorn(config, banner=banner)
        return
    if banner:
        print(banner, flush=True)
    with asyncio.Runner(loop_factory=uvloop_factory()) as runner:
        runner.run(_serve_in_process(config, app or create_app(config)))


async def freeze_startup_heap(app: web.Application) -> None:
    """``on_startup``: collect once, then freeze what is left (see the module docstring)."""
    gc.collect()
    gc.freeze()


def uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (a faster loop, same semantics)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _serve_in_process(config: Config,
                            app: web.Application | Awaitable[web.Application]) -> None:
    """One process: serve until SIGTERM/SIGINT, then drain and clean up.

    Not ``web.run_app``: its signal handler raises ``GracefulExit`` (exit code
    1) out of the loop, and a second SIGTERM during the drain would abort it.
    Here a signal only sets an event, however often it comes.
    """
    if not isinstance(app, web.Application):
        app = await app
    app.on_startup.append(freeze_startup_heap)  # after cleanup_ctx: see the docstring
    runner = web.AppRunner(app, access_log=None,  # proxy.web.middleware.requestlog logs them
                           shutdown_timeout=config.server.shutdown_grace)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.server.host, config.server.port,
                           ssl_context=ssl_context(config))
        await site.start()
        print(f"======== Running on {site.name} ========", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("stopping: finishing requests in flight (up to %gs)",
                 config.server.shutdown_grace)
    finally:
        # Stops accepting, waits for in-flight requests (and the refreshes they
        # started), then runs the app's cleanup: store and HTTP session closed.
        await runner.cleanup()


def _serve_with_gunicorn(config: Config, *, banner: str | None) -> None:
    """A gunicorn master running ``config.server.workers`` aiohttp workers."""
    from gunicorn.app.base import BaseApplication
    from gunicorn.glogging import Logger

    class RootLogger(Logger):  # type: ignore[misc]
        """Gunicorn's own lines go through the proxy's handlers (text or JSON)."""

        def setup(self, cfg: Any) -> None:
            super().setup(cfg)
            for logger in (self.error_log, self.access_log):
                logger.handlers[:] = []
                logger.propagate = True

    async def app_factory() -> web.Application:
        # Called in each worker after the fork: every worker opens its own
        # store connection and HTTP session in the app's cleanup_ctx.
        app = create_app(config)
        app.on_startup.append(freeze_startup_heap)
        return app

    options = {
        "bind": f"{_bind_host(config.server.host)}:{config.server.port}",
        "workers": config.server.workers,
        "worker_class": ("aiohttp.GunicornUVLoopWebWorker" if uvloop_factory()
                         else "aiohttp.GunicornWebWorker"),
        "graceful_timeout": round(config.server.shutdown_grace / _WORKER_GRACE_SHARE + 0.5),
        # A worker blocked this long is stuck (the event loop heartbeats every second).
        "timeout": 60,
        "keepalive": 75,
        "logger_class": RootLogger,
        "accesslog": None,
        "certfile": config.server.tls_cert or None,
        "keyfile": config.server.tls_key or None,
        "proc_name": "twitch-proxy",
        # gunicorn 23+ opens a control socket under $HOME by default; nothing uses it.
        "control_socket_disable": True,
    }

    class ProxyApplication(BaseApplication):  # type: ignore[misc]
        """Gunicorn configured from the proxy's configuration, not from argv."""

        def load_config(self) -> None:
            for key, value in options.items():
                # Settings newer than the installed gunicorn are skipped.
                if value is not None and key in self.cfg.settings:
                    self.cfg.set(key, value)

        def load(self) -> Any:
            return app_factory

    if banner:
        print(banner, flush=True)
    scheme = "https" if config.server.tls_cert else "http"
    print(f"======== Running on {scheme}://{options['bind']} with "
          f"{config.server.workers} workers ========", flush=True)
    ProxyApplication().run()


def _bind_host(host: str) -> str:
    """Gunicorn's bind syntax wants IPv6 addresses in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
