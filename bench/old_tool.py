"""The old tool's design, as the reference for ``POST /refresh``.

A Flask app on Flask's development server (threaded) that, for every
``POST /refresh``, calls the token endpoint with ``requests`` (a new
connection each time, as the old tool did) and returns Twitch's JSON.

``python -m bench.old_tool --port 8001 --token-url http://127.0.0.1:9000/oauth2/token``
"""

from __future__ import annotations

import argparse
import logging

import requests
from flask import Flask, jsonify, request

__all__ = ["create_old_tool"]


def create_old_tool(token_url: str) -> Flask:
    app = Flask("old_tool")

    @app.post("/refresh")
    def refresh():  # type: ignore[no-untyped-def]
        payload = request.get_json(silent=True) or request.form
        answer = requests.post(token_url, data={
            "client_id": "bench-client", "client_secret": "bench-secret",
            "grant_type": "refresh_token", "refresh_token": payload.get("refresh_token", ""),
        }, timeout=10)
        return jsonify(answer.json()), answer.status_code

    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.old_tool")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token-url", required=True)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    create_old_tool(args.token_url).run(host="127.0.0.1", port=args.port, threaded=True)


if __name__ == "__main__":
    main()
