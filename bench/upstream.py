"""The fake Twitch the benchmark talks to, on loopback only.

Two servers:

- :func:`create_fake_twitch`: an aiohttp app with the token endpoint
  (``refresh_token`` and ``client_credentials`` grants), ``/oauth2/validate``
  and ``/helix/*``. It counts every call, can expire every access token it has
  seen (``POST /_bench/expire``; Helix then answers 401 "Invalid OAuth token",
  as Twitch does) and can delay answers. Used for ``/refresh``, the refresh
  storm and the widget-polling scenario, where what matters is *how many*
  calls arrive.
- :class:`Nginx`: nginx from Debian's packages answering every ``/helix/``
  request with a fixed ``/users`` body and Twitch's rate-limit headers. Used
  for the throughput scenarios, so the upstream is never the bottleneck.

``python -m bench.upstream --port 0`` runs the aiohttp fake alone and prints its URL.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from aiohttp import web

__all__ = ["HELIX_USERS_BODY", "Nginx", "create_fake_twitch", "nginx_available"]

#: What ``GET /helix/users`` answers (the shape of Twitch's answer).
HELIX_USERS_BODY = json.dumps({"data": [{
    "id": "141981764", "login": "twitchdev", "display_name": "TwitchDev", "type": "",
    "broadcaster_type": "partner",
    "description": "Supporting third-party developers building Twitch integrations from "
                   "chatbots to game integrations.",
    "profile_image_url": "https://static-cdn.jtvnw.net/jtv_user_pictures/"
                         "8a6381c7-d0c0-4576-b179-38bd5ce1d6af-profile_image-300x300.png",
    "offline_image_url": "", "view_count": 5980557, "created_at": "2016-12-14T20:32:28Z",
}]}, separators=(",", ":"))

_RATELIMIT = {"Ratelimit-Limit": "800", "Ratelimit-Remaining": "799",
              "Ratelimit-Reset": "1999999999"}


class FakeTwitch:
    """Counters and knobs of the fake (plain state)."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.seen_tokens: set[str] = set()
        self.expired: set[str] = set()
        self.token_delay = 0.0
        self.helix_delay = 0.0


fake_twitch_key = web.AppKey("fake_twitch_key", FakeTwitch)


def _new_pair() -> dict[str, Any]:
    return {"access_token": "at-" + secrets.token_hex(12),
            "refresh_token": "rt-" + secrets.token_hex(20),
            "expires_in": 14124, "scope": ["user:read:email"], "token_type": "bearer"}


async def token(request: web.Request) -> web.Response:
    state = request.app[fake_twitch_key]
    form = await request.post()
    grant_type = str(form.get("grant_type", ""))
    state.calls[f"token:{grant_type}"] += 1
    if state.token_delay:
        await asyncio.sleep(state.token_delay)
    if grant_type == "client_credentials":
        return web.json_response({"access_token": "app-" + secrets.token_hex(12),
                                  "expires_in": 5011271, "token_type": "bearer"})
    if grant_type != "refresh_token" or not form.get("refresh_token"):
        return web.json_response({"status": 400, "message": "Invalid refresh token"}, status=400)
    return web.json_response(_new_pair())


async def validate(request: web.Request) -> web.Response:
    state = request.app[fake_twitch_key]
    state.calls["validate"] += 1
    value = request.headers.get("Authorization", "").partition(" ")[2]
    if not value or value in state.expired:
        return web.json_response({"status": 401, "message": "invalid access token"}, status=401)
    return web.json_response({"client_id": "bench-client", "login": "twitchdev",
                              "user_id": "141981764", "scopes": ["user:read:email"],
                              "expires_in": 14000})


async def helix(request: web.Request) -> web.Response:
    state = request.app[fake_twitch_key]
    state.calls[f"helix:{request.method} /{request.match_info['path']}"] += 1
    value = request.headers.get("Authorization", "").partition(" ")[2]
    if state.helix_delay:
        await asyncio.sleep(state.helix_delay)
    if not value or value in state.expired:
        return web.json_response({"error": "Unauthorized", "status": 401,
                                  "message": "Invalid OAuth token"}, status=401,
                                 headers=_RATELIMIT)
    state.seen_tokens.add(value)
    return web.Response(text=HELIX_USERS_BODY, content_type="application/json",
                        headers=_RATELIMIT)


async def control_expire(request: web.Request) -> web.Response:
    """Every access token seen so far stops working (new ones do work)."""
    state = request.app[fake_twitch_key]
    state.expired |= state.seen_tokens
    return web.json_response({"expired": len(state.expired)})


async def control_calls(request: web.Request) -> web.Response:
    return web.json_response(dict(request.app[fake_twitch_key].calls))


async def control_reset(request: web.Request) -> web.Response:
    request.app[fake_twitch_key].calls.clear()
    return web.json_response({})


async def control_delay(request: web.Request) -> web.Response:
    state = request.app[fake_twitch_key]
    body = await request.json()
    state.token_delay = float(body.get("token", state.token_delay))
    state.helix_delay = float(body.get("helix", state.helix_delay))
    return web.json_response({"token": state.token_delay, "helix": state.helix_delay})


def create_fake_twitch() -> web.Application:
    """The aiohttp fake Twitch (see the module docstring)."""
    app = web.Application()
    app[fake_twitch_key] = FakeTwitch()
    app.router.add_post("/oauth2/token", token)
    app.router.add_get("/oauth2/validate", validate)
    app.router.add_route("*", "/helix/{path:.*}", helix)
    app.router.add_post("/_bench/expire", control_expire)
    app.router.add_get("/_bench/calls", control_calls)
    app.router.add_post("/_bench/reset", control_reset)
    app.router.add_post("/_bench/delay", control_delay)
    return app


# -- nginx -------------------------------------------------------------------------


def nginx_available() -> bool:
    return shutil.which("nginx") is not None


_NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 75s;
  server {{
    listen 127.0.0.1:{port};
    location /helix/ {{
      default_type application/json;
      add_header Ratelimit-Limit 800 always;
      add_header Ratelimit-Remaining 799 always;
      add_header Ratelimit-Reset 1999999999 always;
      return 200 '{body}';
    }}
  }}
}}
"""


class Nginx:
    """An nginx serving the fixed Helix answer on ``127.0.0.1:port``."""

    def __init__(self, directory: Path, port: int, *, cpus: str | None = None) -> None:
        self.directory = directory
        self.port = port
        self.cpus = cpus
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "nginx.conf"
        conf.write_text(_NGINX_CONF.format(dir=self.directory, port=self.port,
                                           body=HELIX_USERS_BODY.replace("'", "\\'")))
        command = ["nginx", "-c", str(conf), "-p", str(self.directory), "-e", "stderr"]
        if self.cpus:
            command = ["taskset", "-c", self.cpus, *command]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        time.sleep(0.3)
        if self.process.poll() is not None:
            raise RuntimeError("nginx did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    web.run_app(create_fake_twitch(), host="127.0.0.1", port=args.port, access_log=None,
                print=lambda text: print(text.splitlines()[0], flush=True))


if __name__ == "__main__":
    main()
