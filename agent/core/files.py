"""Files: written so that a reader sees the old one or the new one, never half of either;
and told apart when they change."""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path


def write_atomic(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """A temporary file beside `path`, synced, then renamed over it. On any failure (a full or
    read-only disk) the temporary file is removed, so none piles up, and the error is raised."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class FileStamp:
    """What tells that a file changed without reading it: a replaced file (a new inode, as
    swarm configs and secrets are replaced), a rewritten one (time, size)."""

    mtime_ns: int
    size: int
    inode: int


def stamp(path: Path) -> FileStamp | None:
    """The file's stamp, or None when it cannot be read."""
    try:
        st = path.stat()
    except OSError:
        return None
    return FileStamp(st.st_mtime_ns, st.st_size, st.st_ino)


MiB = 1024 * 1024


class TooLarge(ValueError):
    """A file with more bytes than its reader takes."""


def read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of `path`, reading at most `limit` + 1 of them: TooLarge when there are more
    (a file that never ends, a link to /dev/zero, costs no more than the limit). OSError when
    it cannot be read."""
    with path.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        size = f"{limit // MiB} MiB" if limit % MiB == 0 else f"{limit} bytes"
        raise TooLarge(f"larger than {size}")
    return data
