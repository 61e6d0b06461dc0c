"""Blob storage behind a tiny interface, so S3 or similar can replace the local directory.

Keys are the SHA-256 of the content (content-addressed): the same bytes are
stored once, writes are idempotent, and no user-supplied name or path ever
reaches the filesystem.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Protocol, runtime_checkable

_KEY = re.compile(r"^[0-9a-f]{64}$")


class StorageKeyError(ValueError):
    """A key that this storage could never have produced."""


@runtime_checkable
class Storage(Protocol):
    """put(bytes) -> key, get(key) -> bytes, exists(key)."""

    def put(self, data: bytes) -> str: ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...


def content_key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LocalStorage:
    """Files under ``root/ab/<sha256>``; writes go through a temp file and an atomic rename."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        if not isinstance(key, str) or not _KEY.match(key):
            raise StorageKeyError("invalid storage key")
        return self.root / key[:2] / key

    def put(self, data: bytes) -> str:
        key = content_key(data)
        path = self._path(key)
        if path.is_file():
            return key
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return key

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def exists(self, key: str) -> bool:
        try:
            return self._path(key).is_file()
        except StorageKeyError:
            return False

    def delete(self, key: str) -> None:
        """Remove a blob (retention); a missing one is already gone."""
        self._path(key).unlink(missing_ok=True)
