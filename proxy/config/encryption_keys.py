"""The list of Fernet keys in ``TOKEN_ENCRYPTION_KEY``, parsed and checked.

The first key encrypts, every key decrypts (see :mod:`proxy.store.crypto`).
Parsed here, below the store, so the configuration checks can refuse a bad key
before anything is opened.
"""

from __future__ import annotations

import base64
import string

from cryptography.fernet import Fernet

from .secret import Secret

__all__ = ["parse_keys"]


def _as_fernet_key(text: str) -> Secret:
    """``text``, or the same 32 bytes in Fernet's encoding when given as 64 hex digits.

    Heroku's app.json ``"generator": "secret"`` makes 64 hex digits: 32 random
    bytes, exactly a Fernet key's material, so a one-click deploy needs no
    manual key.
    """
    if len(text) == 64 and all(c in string.hexdigits for c in text):
        return Secret(base64.urlsafe_b64encode(bytes.fromhex(text)).decode())
    return Secret(text)


def parse_keys(value: Secret) -> list[Secret]:
    """Split a comma-separated key list; raise ValueError naming the bad position."""
    keys = [_as_fernet_key(part.strip()) for part in value.reveal().split(",") if part.strip()]
    for position, key in enumerate(keys, 1):
        try:
            Fernet(key.reveal().encode())
        except (ValueError, TypeError):
            raise ValueError(
                f"key {position} of TOKEN_ENCRYPTION_KEY is not a Fernet key "
                "(32 url-safe base64-encoded bytes; make one with "
                "`python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'`)"
            ) from None
    return keys
