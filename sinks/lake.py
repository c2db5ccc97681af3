"""Lake filesystem access: a local directory or an fsspec filesystem (S3 through s3fs).

One narrow interface, two implementations. Paths are relative to the lake root
and always use ``/``. The guarantees the sink builds on:

* ``write(path, data)`` is all-or-nothing and overwrites: locally a temporary
  file in the same directory (a hidden ``.name.tmp-*`` that no ``*.parquet``
  glob matches) is fsynced and ``os.replace``-d into place, then the directory
  is fsynced; on S3 it is one PUT, or a multipart upload that is aborted on any
  error (never a copy-then-delete). A reader sees the old object, the new one,
  or none — never a partial one.
* ``swap(dir, puts, deletes)`` changes several files of one directory at once.
  Locally this is atomic for readers: a sibling staging directory gets hard links
  of the files kept plus the new files and is exchanged with the live one by
  ``renameat2(RENAME_EXCHANGE)`` (the staging directory is a sibling of the
  lake root, since readers' ``**`` globs enter hidden directories). S3 has no multi-object operation, so there the
  new objects are PUT first and the old ones removed in one DeleteObjects call
  (callers journal the change so a crash in between is rolled forward).
* ``lock(dir, exclusive)``: locally an ``flock`` that the sink holds shared while
  it places a file and maintenance holds exclusive while it swaps a directory,
  so a late event written during a compaction is never lost. A no-op on S3,
  where a swap only deletes the objects it read.
* ``update(path, change)`` is a read-modify-write that no other ``update`` of
  the same path interleaves with, for files several sinks change (the column
  registry): locally under an exclusive ``flock``; on S3 a conditional PUT
  (``If-Match`` the ETag read, ``If-None-Match: *`` to create) retried when
  another writer came first.
"""

from __future__ import annotations

import abc
import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tripwire.lake_layout import SINK_DIR, table_of

from .errors import LakeError

logger = logging.getLogger(__name__)

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2



class Lake(abc.ABC):
    """Files under one root, addressed by relative ``/``-separated paths."""

    url: str

    @abc.abstractmethod
    def write(self, path: str, data: bytes) -> None:
        """Atomically create or replace ``path`` with ``data``."""

    @abc.abstractmethod
    def read(self, path: str) -> bytes | None:
        """The bytes of ``path``, or None when it does not exist."""

    @abc.abstractmethod
    def exists(self, path: str) -> bool: ...

    @abc.abstractmethod
    def list(self, under: str = "", suffix: str = "") -> list[str]:
        """Every file below ``under`` whose name ends with ``suffix`` (sorted; hidden files excluded)."""

    @abc.abstractmethod
    def sizes(self, under: str = "", suffix: str = "") -> dict[str, int]:
        """Like ``list``, with each file's size in bytes."""

    @abc.abstractmethod
    def delete(self, paths: Sequence[str]) -> None:
        """Remove ``paths``; missing ones are ignored."""

    @abc.abstractmethod
    def swap(self, directory: str, puts: Mapping[str, bytes], deletes: Sequence[str]) -> None:
        """Add/replace ``puts`` (names in ``directory``) and remove ``deletes`` together."""

    @contextlib.contextmanager
    def lock(self, directory: str, exclusive: bool) -> Iterator[None]:
        yield

    @abc.abstractmethod
    def update(self, path: str, change: Callable[[bytes | None], bytes | None]) -> bytes | None:
        """Replace ``path`` with ``change(current bytes or None)`` atomically with respect to other
        updates of it (``change`` may run more than once); None from ``change`` leaves the file as it
        is. Returns the file's bytes afterwards."""

    def cleanup(self, prefix: str) -> int:
        """Remove leftovers of interrupted local writes whose names start with ``prefix``."""
        return 0

    def cleanup_swaps(self) -> int:
        """Remove staging directories an interrupted ``swap`` left (maintenance runs one at a time)."""
        return 0

    def full(self, path: str) -> str:
        return f"{self.url}/{path}" if path else self.url


class LocalLake(Lake):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.url = str(self.root)
        self._exchange_ok: bool | None = None

    def _p(self, path: str) -> Path:
        return self.root / path if path else self.root

    def _mkdirs(self, directory: Path) -> None:
        if directory.is_dir():
            return
        missing = []
        d = directory
        while not d.exists():
            missing.append(d)
            d = d.parent
        directory.mkdir(parents=True, exist_ok=True)
        for d in reversed(missing):  # make the new directory entries durable too
            _fsync_dir(d.parent)

    def write(self, path: str, data: bytes) -> None:
        target = self._p(path)
        try:
            self._mkdirs(target.parent)
            _write_durable(target, data)
        except OSError as exc:
            raise LakeError(f"cannot write {target}: {exc}") from exc

    def read(self, path: str) -> bytes | None:
        try:
            return self._p(path).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise LakeError(f"cannot read {self._p(path)}: {exc}") from exc

    def exists(self, path: str) -> bool:
        return self._p(path).exists()

    def list(self, under: str = "", suffix: str = "") -> list[str]:
        return sorted(self.sizes(under, suffix))

    def sizes(self, under: str = "", suffix: str = "") -> dict[str, int]:
        out = {}
        for dirpath, dirnames, filenames in os.walk(self._p(under)):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = os.path.relpath(dirpath, self.root)
            for name in filenames:
                if name.endswith(suffix) and not name.startswith("."):
                    with contextlib.suppress(FileNotFoundError):
                        size = os.stat(os.path.join(dirpath, name)).st_size
                        out[name if rel == "." else f"{rel}/{name}".replace(os.sep, "/")] = size
        return out

    def delete(self, paths: Sequence[str]) -> None:
        dirs = set()
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                self._p(path).unlink()
                dirs.add(self._p(path).parent)
        for d in dirs:
            _fsync_dir(d)

    def swap(self, directory: str, puts: Mapping[str, bytes], deletes: Sequence[str]) -> None:
        live = self._p(directory)
        gone = set(deletes)
        if not live.is_dir():
            for name, data in puts.items():
                self.write(f"{directory}/{name}", data)
            return
        # Outside the lake: DuckDB's '**' descends into hidden directories too.
        staging = self.root.parent / f".{self.root.name}.swap-{secrets.token_hex(4)}"
        staging.mkdir()
        try:
            for entry in os.scandir(live):
                if entry.is_file() and entry.name not in gone and entry.name not in puts:
                    os.link(entry.path, staging / entry.name)
            for name, data in puts.items():
                _write_durable(staging / name, data, sync_dir=False)
            _fsync_dir(staging)
            if not self._exchange(staging, live):
                # No RENAME_EXCHANGE on this filesystem: per-file replace, then deletes.
                for name, data in puts.items():
                    os.replace(staging / name, live / name)
                _fsync_dir(live)
                self.delete([f"{directory}/{n}" for n in gone])
            _fsync_dir(live.parent)
        except OSError as exc:
            raise LakeError(f"cannot swap files of {live}: {exc}") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _exchange(self, a: Path, b: Path) -> bool:
        if self._exchange_ok is False:
            return False
        libc = ctypes.CDLL(None, use_errno=True)
        fn = getattr(libc, "renameat2", None)
        if fn is None:
            self._exchange_ok = False
            return False
        if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
            self._exchange_ok = True
            return True
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            logger.warning("filesystem of %s has no RENAME_EXCHANGE; swaps are per file", b)
            self._exchange_ok = False
            return False
        raise OSError(err, os.strerror(err), str(b))

    def update(self, path: str, change: Callable[[bytes | None], bytes | None]) -> bytes | None:
        with self.lock(f"%file%{path}", exclusive=True):
            current = self.read(path)
            new = change(current)
            if new is None:
                return current
            self.write(path, new)
            return new

    @contextlib.contextmanager
    def lock(self, directory: str, exclusive: bool) -> Iterator[None]:
        name = directory.replace("/", "%") or "%root"
        path = self.root / SINK_DIR / "locks" / f"{name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # releases the lock

    def cleanup_swaps(self) -> int:
        stale = list(self.root.parent.glob(f".{self.root.name}.swap-*"))
        for d in stale:
            shutil.rmtree(d, ignore_errors=True)
        return len(stale)

    def cleanup(self, prefix: str) -> int:
        removed = 0
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if d != SINK_DIR]
            for name in filenames:
                if name.startswith(f".{prefix}") and ".tmp-" in name:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(dirpath, name))
                        removed += 1
        return removed


def open_lake(url: str, storage_options: Mapping[str, Any] | None = None) -> Lake:
    """A :class:`Lake` for a directory, ``s3://bucket/prefix`` or another fsspec URL."""
    if "://" not in url or url.startswith("file://"):
        return LocalLake(url.removeprefix("file://"))
    from .fsspec_lake import FsspecLake

    return FsspecLake(url, storage_options)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durable(target: Path, data: bytes, sync_dir: bool = True) -> None:
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if sync_dir:
        _fsync_dir(target.parent)


def data_files(lake: Lake, under: str = "") -> dict[str, dict[str, int]]:
    """Data files of both tables by directory (``date=...``, ``_invalid/date=...``), with sizes.

    The sink's own folder and the column file are not data files.
    """
    out: dict[str, dict[str, int]] = {}
    for path, size in lake.sizes(under).items():  # one listing for both tables
        if table_of(path) is None:
            continue
        directory, name = path.rsplit("/", 1)
        out.setdefault(directory, {})[name] = size
    return out
