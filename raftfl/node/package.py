"""A Flower app directory as one bounded blob, and back: how a run's app reaches every node.

Like Flower's FAB, a package holds the app's `pyproject.toml` and its python files, nothing
else (no data, no caches), so `raftfl run submit` can store it in etcd beside the run and
every node can load the same code. It is a zip with fixed timestamps and sorted entries, so
the same directory always packs to the same bytes (the same sha256).

Both directions treat the other side as hostile. Packing refuses symlinks (they could pull in
files from outside the app) and bounds the size. Unpacking, which reads what anyone with etcd
access may have written, refuses absolute paths, `..`, symlinks, names outside the python and
pyproject files, too many or too large entries; it extracts into a fresh directory and
renames it into place, so a refused or half-written package never leaves a half app behind.
"""

from __future__ import annotations

import io
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from raftfl.core.errors import RaftflError
from raftfl.files import make_private_dir

MAX_PACKAGE_BYTES = 1024 * 1024  # the stored blob: one etcd request, with room to spare
MAX_UNPACKED_BYTES = 8 * 1024 * 1024
MAX_FILES = 1000
_EPOCH = (1980, 1, 1, 0, 0, 0)  # zip's earliest date: packing ignores mtimes
_SKIP_DIRS = {"__pycache__", "build", "dist"}


class PackageError(RaftflError):
    """An app directory that cannot be packed, or a package that must not be unpacked."""


def _wanted(rel: PurePosixPath) -> bool:
    return rel.as_posix() == "pyproject.toml" or rel.suffix == ".py"


def pack(root: Path) -> bytes:
    """The app directory `root` as a package: `pyproject.toml` and every `*.py` below it
    (hidden directories, `__pycache__`, `build` and `dist` left out)."""
    root = Path(root)
    if not (root / "pyproject.toml").is_file():
        raise PackageError(f"{root} is not a Flower app directory: no pyproject.toml")
    files: list[tuple[str, Path]] = []
    for path in sorted(root.rglob("*")):
        rel = PurePosixPath(path.relative_to(root).as_posix())
        if any(part.startswith(".") or part in _SKIP_DIRS for part in rel.parts[:-1]):
            continue
        if path.is_symlink():
            raise PackageError(f"refusing to package {path}: it is a symlink")
        if path.is_file() and _wanted(rel):
            files.append((rel.as_posix(), path))
    if len(files) > MAX_FILES:
        raise PackageError(f"{root} has {len(files)} files to package, more than {MAX_FILES}")
    out = io.BytesIO()
    total = 0
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, path in files:
            data = path.read_bytes()
            total += len(data)
            if total > MAX_UNPACKED_BYTES:
                raise PackageError(f"{root}: the python files and pyproject.toml exceed "
                                   f"{MAX_UNPACKED_BYTES // 2**20} MiB")
            info = zipfile.ZipInfo(name, _EPOCH)
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    blob = out.getvalue()
    if len(blob) > MAX_PACKAGE_BYTES:
        raise PackageError(f"{root} packs to {len(blob)} bytes, more than {MAX_PACKAGE_BYTES}")
    return blob


def _check_entry(info: zipfile.ZipInfo) -> PurePosixPath:
    name = info.filename
    path = PurePosixPath(name)
    if not name or name.startswith("/") or "\\" in name or ":" in path.parts[0] \
            or any(part in ("", ".", "..") for part in name.split("/")):
        raise PackageError(f"refusing package entry {name[:80]!r}: not a plain relative path")
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind not in (0, stat.S_IFREG):  # 0: written by a tool that sets no mode
        raise PackageError(f"refusing package entry {name[:80]!r}: not a regular file "
                           f"(a symlink or device)")
    if not _wanted(path):
        raise PackageError(f"refusing package entry {name[:80]!r}: only pyproject.toml and "
                           "python files are packaged")
    return path


def unpack(blob: bytes, dest: Path) -> Path:
    """Extract the package `blob` to `dest` (replacing what is there); returns `dest`.

    Every entry is checked before anything is written; the files go to a fresh directory
    beside `dest` that is renamed into place at the end."""
    if len(blob) > MAX_PACKAGE_BYTES:
        raise PackageError(f"package of {len(blob)} bytes, more than {MAX_PACKAGE_BYTES}")
    try:
        zf = zipfile.ZipFile(io.BytesIO(blob))
        infos = [i for i in zf.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise PackageError(f"not an app package: {exc}") from None
    if len(infos) > MAX_FILES:
        raise PackageError(f"package has {len(infos)} entries, more than {MAX_FILES}")
    paths = [_check_entry(info) for info in infos]
    if PurePosixPath("pyproject.toml") not in paths:
        raise PackageError("package has no pyproject.toml")
    if len(set(paths)) != len(paths):
        raise PackageError("package names a file twice")
    make_private_dir(dest.parent)
    work = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        total = 0
        for info, rel in zip(infos, paths, strict=True):
            try:
                with zf.open(info) as fh:
                    data = fh.read(MAX_UNPACKED_BYTES - total + 1)  # never trust file_size
            except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
                raise PackageError(f"package entry {rel} is unreadable: {exc}") from None
            total += len(data)
            if total > MAX_UNPACKED_BYTES:
                raise PackageError(f"package unpacks to more than {MAX_UNPACKED_BYTES} bytes")
            target = work.joinpath(*rel.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        if dest.is_symlink() or dest.is_file():
            raise PackageError(f"refusing to replace {dest}: not a directory")
        if dest.exists():
            shutil.rmtree(dest)
        work.rename(dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return dest
