"""Encryption at rest for everything the store persists about a grant.

Grant records are encrypted with Fernet (AES-128-CBC + HMAC-SHA256, from
``cryptography``). ``TOKEN_ENCRYPTION_KEY`` holds one or more comma-separated
keys (parsed by :func:`proxy.config.encryption_keys.parse_keys`): the first
encrypts, all decrypt, so a key is rotated by putting the new
one first and re-saving (``twitch-proxy grants reencrypt``) before dropping
the old one. For the SQLite default without a configured key, a key file is
created beside the database (mode 0600) on first start, under a random
temporary name opened exclusively and without following links; an existing key
file is used only if it is a private regular file of this user. The memory
store keeps nothing on disk and is not encrypted.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import stat
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from ..config.secret import Secret
from ..errors import DecryptionFailed, KeyFileError

__all__ = ["Cipher", "FernetCipher", "PlainCipher", "key_file_for", "load_or_create_key_file"]

log = logging.getLogger(__name__)


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


def key_file_for(database: Path) -> Path:
    """Where the generated key of a SQLite database lives."""
    return database.with_name(database.name + ".key")


#: Permission bits for group and others: a key file must have none of them.
_SHARED_BITS = 0o077


def load_or_create_key_file(database: Path) -> Secret:
    """Read the key file beside ``database``, creating it (0600) on first start.

    An existing key file is refused (:class:`KeyFileError`) when it is a
    symbolic link, not a regular file, owned by another user, or open to group
    or others: any of these lets someone else read the key or choose it.
    """
    path = key_file_for(database)
    key = _read_key_file(path)
    if key is not None:
        return key
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    created = _create_key_file(path)
    if created is None:  # another worker created it first
        key = _read_key_file(path)
        if key is None:
            raise KeyFileError(f"the key file {path} vanished while it was being created")
        return key
    log.warning(
        "created encryption key file %s (mode 0600) for the token database; "
        "keep it with the database, or set TOKEN_ENCRYPTION_KEY instead", path,
    )
    return created


def _refusal(path: Path, why: str) -> KeyFileError:
    return KeyFileError(f"refusing the encryption key file {path}: {why} "
                        "(or set TOKEN_ENCRYPTION_KEY instead)")


def _read_key_file(path: Path) -> Secret | None:
    """The key in ``path``, None when there is no such file; refuses an unsafe file."""
    try:
        # O_NOFOLLOW: a link planted at this name is not followed to a key
        # someone else chose; O_NONBLOCK: a planted FIFO cannot hang the start.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refusal(path, "it is a symbolic link; put the key file itself there") \
                from None
        raise KeyFileError(f"cannot read the encryption key file {path} ({exc.strerror})") \
            from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        mode = stat.S_IMODE(info.st_mode)
        if not stat.S_ISREG(info.st_mode):
            raise _refusal(path, "it is not a regular file")
        if info.st_uid != os.geteuid():
            raise _refusal(path, f"it belongs to another user (uid {info.st_uid})")
        if mode & _SHARED_BITS:
            raise _refusal(path, f"other users may read or change it (mode {mode:04o}); "
                                 f"make it private with `chmod 600 {path}`")
        return Secret(handle.read().decode("ascii").strip())


def _temporary_key_path(path: Path) -> Path:
    """An unpredictable name beside ``path``: nobody can plant a file there beforehand."""
    return path.with_name(f"{path.name}.{secrets.token_hex(16)}.tmp")


def _create_key_file(path: Path) -> Secret | None:
    """Write a new key to ``path`` (0600, whole or not at all); None if it already exists."""
    key = Fernet.generate_key()
    temporary = _temporary_key_path(path)
    try:
        # O_EXCL|O_NOFOLLOW: a new file of our own, never one (or a link) that
        # someone else put there; 0600 from the first byte.
        fd = os.open(temporary,
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise KeyFileError(f"cannot create the encryption key file {path} safely: "
                           f"{temporary.name}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(key + b"\n")
            handle.flush()
            os.fsync(handle.fileno())  # on disk before any record is encrypted with it
        # A hard link, not a rename, puts it in place: as atomic, but it fails on
        # an existing name (a link too) instead of replacing it, so a key another
        # worker created meanwhile is never swapped for ours.
        try:
            os.link(temporary, path, follow_symlinks=False)
        except FileExistsError:
            return None
        _sync_directory(path.parent)
    finally:
        temporary.unlink()
    return Secret(key.decode())


def _sync_directory(directory: Path) -> None:
    """Make a new name in ``directory`` survive a power cut."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
