"""Encryption at rest for everything the store persists about a grant.

Grant records are encrypted with Fernet (AES-128-CBC + HMAC-SHA256, from
``cryptography``). ``TOKEN_ENCRYPTION_KEY`` holds one or more comma-separated
keys: the first encrypts, all decrypt, so a key is rotated by putting the new
one first and re-saving (``twitch-proxy grants reencrypt``) before dropping
the old one. For the SQLite default without a configured key, a key file is
created beside the database (mode 0600) on first start. The memory store keeps
nothing on disk and is not encrypted.
"""

from __future__ import annotations

import base64
import logging
import os
import string
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from .errors import ProxyError
from .secret import Secret

__all__ = ["Cipher", "FernetCipher", "PlainCipher", "DecryptionFailed", "key_file_for",
           "load_or_create_key_file", "parse_keys"]

log = logging.getLogger(__name__)


class DecryptionFailed(ProxyError):
    """A stored record could not be decrypted with any configured key.

    A configuration problem (a changed or wrong key), never a token's fault:
    the server refuses to start on it, and a request meeting it gets a 500
    whose message says what to fix.
    """

    code = "store_key_mismatch"


class Cipher:
    """Turns plaintext records into what is stored, and back."""

    def encrypt(self, data: bytes) -> bytes:
        raise NotImplementedError

    def decrypt(self, data: bytes) -> bytes:
        raise NotImplementedError


class PlainCipher(Cipher):
    """No encryption: for the in-memory store, which never touches a disk."""

    def encrypt(self, data: bytes) -> bytes:
        return data

    def decrypt(self, data: bytes) -> bytes:
        return data


class FernetCipher(Cipher):
    """Fernet with key rotation: the first key encrypts, every key decrypts."""

    def __init__(self, keys: list[Secret]) -> None:
        if not keys:
            raise ValueError("at least one key is needed")
        self._fernet = MultiFernet([Fernet(k.reveal().encode()) for k in keys])

    def encrypt(self, data: bytes) -> bytes:
        return self._fernet.encrypt(data)

    def decrypt(self, data: bytes) -> bytes:
        try:
            return self._fernet.decrypt(data)
        except InvalidToken:
            raise DecryptionFailed(
                "a stored record cannot be decrypted with the configured encryption key "
                "(TOKEN_ENCRYPTION_KEY, or the key file beside the SQLite database): to "
                "change keys, put the new key first and keep the old one after it until "
                "`twitch-proxy grants reencrypt` has run"
            ) from None


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


def key_file_for(database: Path) -> Path:
    """Where the generated key of a SQLite database lives."""
    return database.with_name(database.name + ".key")


def load_or_create_key_file(database: Path) -> Secret:
    """Read the key file beside ``database``, creating it (0600) on first start."""
    path = key_file_for(database)
    try:
        return Secret(path.read_text(encoding="ascii").strip())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    # Write a private temporary file, then link it into place: the key file
    # appears whole or not at all, even when several workers start at once.
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key + b"\n")
    try:
        os.link(temporary, path)
    except FileExistsError:  # another worker created it first
        return Secret(path.read_text(encoding="ascii").strip())
    finally:
        temporary.unlink()
    log.warning(
        "created encryption key file %s (mode 0600) for the token database; "
        "keep it with the database, or set TOKEN_ENCRYPTION_KEY instead", path,
    )
    return Secret(key.decode())
