"""The yardstick: a minimal correct aiohttp forwarder for Helix.

What "aiohttp itself costs" for a pass-through: one shared ClientSession
(aiohttp's defaults: a cookie jar, decompression on), the request's
Authorization passed on, Client-Id added, the answer read whole and sent back
with its status and every header that is not hop-by-hop. No credentials
store, no refresh, no caching: the floor the proxy is measured against.

``python -m bench.reference --port 8000 --upstream http://127.0.0.1:9000/helix``
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

__all__ = ["create_reference_app"]

HOP_BY_HOP = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE",
    "Trailer", "Transfer-Encoding", "Upgrade", "Content-Length", "Content-Encoding",
))

session_key = web.AppKey("session_key", aiohttp.ClientSession)
upstream_key = web.AppKey("upstream_key", str)
client_id_key = web.AppKey("client_id_key", str)


async def forward(request: web.Request) -> web.Response:
    headers = {"Client-Id": request.app[client_id_key]}
    if "Authorization" in request.headers:
        headers["Authorization"] = request.headers["Authorization"]
    url = f"{request.app[upstream_key]}/{request.match_info['path']}"
    if request.query_string:
        url += "?" + request.query_string
    body = await request.read()
    async with request.app[session_key].request(request.method, url, headers=headers,
                                                data=body or None,
                                                allow_redirects=False) as upstream:
        payload = await upstream.read()
        out = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
        return web.Response(status=upstream.status, body=payload, headers=out)


def create_reference_app(upstream: str, client_id: str = "bench-client") -> web.Application:
    app = web.Application()
    app[upstream_key] = upstream.rstrip("/")
    app[client_id_key] = client_id

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        app[session_key] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        yield
        await app[session_key].close()

    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/helix/{path:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.reference")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="Helix base URL")
    args = parser.parse_args()
    web.run_app(create_reference_app(args.upstream), host="127.0.0.1", port=args.port,
                access_log=None, print=lambda text: print(text.splitlines()[0], flush=True))


if __name__ == "__main__":
    main()
