"""Fetch the corpus from a local mirror or its URL and verify its sha256 before it lands in place."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

from llama_pe.errors import LlamaPeError
from llama_pe.io import atomic_path

log = logging.getLogger(__name__)

MIRROR_ENV = "LLAMA_PE_MIRROR"
_CHUNK_BYTES = 1 << 16


class DownloadError(LlamaPeError, RuntimeError):
    """The corpus could be had from no source."""


class ChecksumError(LlamaPeError, ValueError):
    """The corpus was found but its bytes are not the ones data.sha256 names."""


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_corpus(
    url: str,
    sha256: str,
    out: str | Path,
    mirror: str | None = None,
    attempts: int = 3,
    timeout_s: float = 30.0,
    backoff_s: float = 1.0,
) -> str:
    """Put the verified corpus at `out`; return where it came from. `mirror` defaults to $LLAMA_PE_MIRROR."""
    out = Path(out)
    mirror = os.environ.get(MIRROR_ENV) if mirror is None else mirror
    mirror_file = _find_in_mirror(Path(mirror), out.name, url) if mirror else None
    if mirror_file is not None:
        _install(out, sha256, str(mirror_file), lambda tmp: shutil.copyfile(mirror_file, tmp))
        return str(mirror_file)
    if mirror:
        log.warning("%s=%s holds no %s; trying %s", MIRROR_ENV, mirror, out.name, url)
    try:
        _install(out, sha256, url, lambda tmp: _download(url, tmp, attempts, timeout_s, backoff_s))
    except DownloadError as err:
        where = f"{MIRROR_ENV}={mirror} holds no {out.name}" if mirror else f"{MIRROR_ENV} is not set"
        raise DownloadError(
            f"{err}; {where}. For offline use, set {MIRROR_ENV} to a folder that holds {out.name} (sha256 {sha256})."
        ) from err
    return url


def _find_in_mirror(mirror: Path, out_name: str, url: str) -> Path | None:
    # The file may be named like the output (tinyshakespeare.txt) or like the URL's last part (input.txt).
    for name in dict.fromkeys([out_name, url.rstrip("/").rsplit("/", 1)[-1]]):
        if (mirror / name).is_file():
            return mirror / name
    return None


def _install(out: Path, sha256: str, source: str, fetch) -> None:
    with atomic_path(out) as tmp:
        fetch(tmp)
        actual = sha256_of(tmp)
        if actual != sha256.lower():
            raise ChecksumError(
                f"checksum mismatch for {source}: expected sha256 {sha256.lower()} (data.sha256), "
                f"got {actual}; nothing was written to {out}"
            )
    log.info("wrote %s (%d bytes) from %s", out, out.stat().st_size, source)


def _download(url: str, dest: Path, attempts: int, timeout_s: float, backoff_s: float) -> None:
    last_error: Exception | None = None
    for attempt in range(1, attempts + 1):
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response, open(dest, "wb") as f:
                shutil.copyfileobj(response, f, _CHUNK_BYTES)
            return
        except (urllib.error.URLError, OSError, ValueError) as err:
            last_error = err
            log.warning("attempt %d/%d to fetch %s failed: %s", attempt, attempts, url, err)
            if attempt < attempts:
                time.sleep(backoff_s * 2 ** (attempt - 1))  # exponential backoff: 1 s, 2 s, 4 s, ...
    raise DownloadError(f"could not fetch {url} after {attempts} attempts (last error: {last_error})")
