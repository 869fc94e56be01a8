"""Local files a node writes: private directories and atomic, symlink-refusing writes.

A node's data dir holds its etcd member's data and its copy of the model, so it is created
0700. Results (the final model, its hash) are written to a temporary file, fsynced and
renamed over the target, so a reader sees the old file or the new one, never half of one;
and a symlink planted at the target is refused rather than followed or silently replaced.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from raftfl.core.errors import RaftflError


def make_private_dir(path: Path) -> None:
    """Create `path` and any missing parents, each 0700 (an existing directory is kept)."""
    missing = []
    for parent in (path, *path.parents):
        if parent.exists():
            break
        missing.append(parent)
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            pass  # created meanwhile by someone else: fine, it exists
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a directory")


def write_atomic(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Replace `path` with `data` atomically (temp file, fsync, rename, fsync of the dir).

    Raises RaftflError when `path` is a symlink: whoever planted it may mean us to write
    elsewhere, and replacing it silently would hide that.
    """
    path = Path(path)
    if path.is_symlink():
        raise RaftflError(f"refusing to write {path}: it is a symlink")
    blob = data.encode() if isinstance(data, str) else data
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.rename(tmp, path)  # replaces the directory entry; never follows a link there
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
