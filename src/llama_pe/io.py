"""Write outputs under a temporary name and rename them into place, so no reader sees a half-written file."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(target: str | Path, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `target`; on success it replaces `target`, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target)
    # A sibling, so the final rename stays on one filesystem and is atomic; the pid tells a leftover of a killed
    # writer from the temporary of a live one.
    prefix = f".{target.name}.{os.getpid()}."
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=target.parent))
    else:
        handle, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=target.parent)
        os.close(handle)
        tmp = Path(name)
    try:
        yield tmp
        if directory:
            _replace_directory(tmp, target)
        else:
            os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; outputs should read like any other file
            os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def remove_leftovers(target: Path) -> None:
    """Delete the temporaries that a writer of `target` killed mid-write (kill -9 runs no cleanup) left behind."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(\d+)\..*\.tmp|\.{re.escape(target.name)}\.old")
    for sibling in target.parent.iterdir():
        match = pattern.fullmatch(sibling.name)
        if match and not (match.group(1) and _is_running(int(match.group(1)))):
            shutil.rmtree(sibling) if sibling.is_dir() else sibling.unlink()


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def _replace_directory(tmp: Path, target: Path) -> None:
    os.chmod(tmp, 0o755)
    if not target.exists():
        os.replace(tmp, target)
        return
    # rename() cannot replace a non-empty directory: move the old one aside first, then drop it.
    old = target.with_name(f".{target.name}.old")
    remove_path(old)
    os.replace(target, old)
    os.replace(tmp, target)
    remove_path(old)


def remove_path(path: Path) -> None:
    """A file or a folder, whichever is there (a folder may replace a file)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
