"""The JSON frames the mock's EventSub WebSocket sends, in the shapes of Twitch's reference.

Pure functions, no I/O: ``session_welcome``, ``session_keepalive``,
``session_reconnect``, ``notification`` and ``revocation``, plus Twitch's
timestamps (RFC 3339 with nanoseconds) and the close codes with their reasons.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "CLOSE_REASONS",
    "CLOSE_STATUSES",
    "keepalive_message",
    "notification_message",
    "reconnect_message",
    "revocation_message",
    "timestamp",
    "welcome_message",
]

# Twitch's close codes and the reasons its frames carry.
CLOSE_REASONS = {
    4000: "internal server error",
    4001: "client sent inbound traffic",
    4002: "client failed ping-pong",
    4003: "connection unused",
    4004: "reconnect grace time expired",
    4005: "network timeout",
    4006: "network error",
    4007: "invalid reconnect",
}

# The status a WebSocket subscription is left with when its session ends that way
# (Get EventSub Subscriptions lists these for disabled subscriptions).
CLOSE_STATUSES = {
    4000: "websocket_internal_error",
    4001: "websocket_received_inbound_traffic",
    4002: "websocket_failed_ping_pong",
    4003: "websocket_connection_unused",
    4005: "websocket_network_timeout",
    4006: "websocket_network_error",
}


def timestamp(seconds: float) -> str:
    """Twitch's EventSub timestamp: RFC 3339, UTC, nine digits of fraction."""
    whole = int(seconds)
    nanos = round((seconds - whole) * 1e9) % 1_000_000_000
    return datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


def _metadata(message_type: str, at: str, **extra: str) -> dict[str, str]:
    return {"message_id": str(uuid.uuid4()), "message_type": message_type,
            "message_timestamp": at, **extra}


def _session(session_id: str, status: str, connected_at: str, keepalive: int | None,
             reconnect_url: str | None) -> dict[str, Any]:
    return {"id": session_id, "status": status, "connected_at": connected_at,
            "keepalive_timeout_seconds": keepalive, "reconnect_url": reconnect_url,
            "recovery_url": None}


def welcome_message(session_id: str, connected_at: str, keepalive: int, at: str) -> dict[str, Any]:
    """``session_welcome``: the session's id and its keepalive timeout."""
    return {"metadata": _metadata("session_welcome", at),
            "payload": {"session": _session(session_id, "connected", connected_at, keepalive,
                                            None)}}


def keepalive_message(at: str) -> dict[str, Any]:
    """``session_keepalive``, sent when nothing else was sent for the keepalive time."""
    return {"metadata": _metadata("session_keepalive", at), "payload": {}}


def reconnect_message(session_id: str, connected_at: str, reconnect_url: str,
                      at: str) -> dict[str, Any]:
    """``session_reconnect``: status ``reconnecting``, keepalive null, the URL to move to."""
    return {"metadata": _metadata("session_reconnect", at),
            "payload": {"session": _session(session_id, "reconnecting", connected_at, None,
                                            reconnect_url)}}


def notification_message(subscription: dict[str, Any], event: dict[str, Any],
                         at: str) -> dict[str, Any]:
    """``notification``: metadata names the subscription's type and version."""
    metadata = _metadata("notification", at, subscription_type=subscription["type"],
                         subscription_version=subscription["version"])
    return {"metadata": metadata, "payload": {"subscription": subscription, "event": event}}


def revocation_message(subscription: dict[str, Any], at: str) -> dict[str, Any]:
    """``revocation``: the subscription with its new status; no event."""
    metadata = _metadata("revocation", at, subscription_type=subscription["type"],
                         subscription_version=subscription["version"])
    return {"metadata": metadata, "payload": {"subscription": subscription}}
