"""Where results go: output paths checked before any work starts, files that appear whole or not at
all, and the progress bars on stderr."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from tqdm.auto import tqdm

from .errors import BertforgeError


def check_output(path: str | Path, *inputs: str | Path | None) -> Path:
    """``path`` as a file to write, checked before the model loads: not one of ``inputs`` (writing it
    would destroy the input), not a directory, in a directory that exists or can be created and written in."""
    path = Path(path)
    for i in inputs:
        if i is not None and path.exists() and Path(i).exists() and path.samefile(i):
            raise BertforgeError(f"{path}: is the input file; choose another output")
    if path.is_dir():
        raise BertforgeError(f"{path}: is a directory")
    _check_writable(path.parent, path)
    return path


def check_out_dir(path: str | Path) -> Path:
    """``path`` as a directory to write into (finetune and pretrain --out), checked the same way."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BertforgeError(f"{path}: is a file, not a directory")
    _check_writable(path, path)
    return path


def _check_writable(directory: Path, path: Path) -> None:
    """The nearest existing ancestor of ``directory`` (itself when it exists) is a directory we can create files in."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise BertforgeError(f"{path}: {existing} is a file, not a directory")
    try:  # a probe, not os.access: root passes access() where it cannot create files (/proc, read-only mounts)
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".bertforge-", suffix=".tmp")
    except OSError:
        raise BertforgeError(f"{path}: cannot write in {existing}") from None
    os.close(fd)
    os.unlink(probe)


def current_umask() -> int:
    """The process's umask: from /proc where Linux shows it, else by setting it and back (there is no
    getter, and setting it is process-wide for that instant)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that takes a path, renamed into place when the
    block ends: readers never see half a file, and on any failure it is removed. The file gets the
    umask's permissions whatever the writer made (safetensors writes 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """``path`` opened for writing through ``atomic_path``."""
    with atomic_path(path) as tmp, tmp.open(mode, encoding=None if "b" in mode else "utf-8") as f:
        yield f


def atomic_text(path: str | Path, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def progress_enabled(enabled: bool = True) -> bool:
    """Progress is shown: ``enabled`` and ``TQDM_DISABLE`` not set (tqdm's own switch, which it ignores once a
    caller passes ``disable``): ``TQDM_DISABLE=1 bertforge ...`` for clean logs."""
    quiet = os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no")
    return enabled and not quiet


def progress_bar(enabled: bool = True, **kwargs) -> tqdm:
    """A tqdm bar on stderr, off unless ``progress_enabled(enabled)``."""
    return tqdm(disable=not progress_enabled(enabled), **kwargs)


def sha256(*paths: Path) -> str:
    """The sha256 of the files' bytes, one after another, read in blocks."""
    digest = hashlib.sha256()
    for path in paths:
        with Path(path).open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()
