"""Files: atomic writes (a reader, or a crash, sees the old file or the new one, never half of one)
and bounded reads of files a person names."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from devid.errors import NotFoundError, PolicyError


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600, durable: bool = True) -> None:
    """Write `data` to `path` through a temporary file and a rename.

    `durable` adds fsync of the file and its directory, so the write survives power loss; the
    factory turns it off for bulk device folders because the store, not the folder, is the record.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_new(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Create `path` with `data`, refusing an existing file (O_EXCL).

    For files written once into a folder made for them (a device folder on the line): no temp file
    and rename, which cost more than the write itself at thousands of devices a second.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


#: What a file named on the command line may hold at most unless the caller says otherwise: every
#: such file (a CSR, a certificate, a PIN, a JWKS) is a few kilobytes.
MAX_FILE_BYTES = 1 << 20


def read_file(path: Path, what: str, *, limit: int = MAX_FILE_BYTES) -> bytes:
    """A regular file of at most `limit` bytes, named by a person; anything else is refused by name.

    Opened non-blocking, so a FIFO with no writer is refused instead of waiting, and checked on the
    open descriptor, so `/dev/zero` or a directory never reaches a read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise NotFoundError("file-unreadable", f"cannot read {what} file {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PolicyError("file-not-regular", f"{what} file {path} is not a regular file")
        if info.st_size > limit:
            raise PolicyError("file-too-large", f"{what} file {path} is larger than {limit:,} bytes")
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(limit + 1)  # the file may grow between fstat and read
    except OSError as exc:
        raise NotFoundError("file-unreadable", f"cannot read {what} file {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise PolicyError("file-too-large", f"{what} file {path} is larger than {limit:,} bytes")
    return data
