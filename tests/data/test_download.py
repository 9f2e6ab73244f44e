import hashlib
import subprocess
import sys

import pytest

from llama_pe.core.data.download import MIRROR_ENV, ChecksumError, DownloadError, fetch_corpus
from tests.conftest import REPO_ROOT, committed_text

URL = "https://example.invalid/char-rnn/input.txt"
TEXT = b"First Citizen:\nBefore we proceed any further, hear me speak.\n"
SHA = hashlib.sha256(TEXT).hexdigest()


@pytest.fixture(autouse=True)
def no_mirror_from_environment(monkeypatch):
    monkeypatch.delenv(MIRROR_ENV, raising=False)


@pytest.fixture
def mirror(tmp_path):
    folder = tmp_path / "mirror"
    folder.mkdir()
    (folder / "tinyshakespeare.txt").write_bytes(TEXT)
    return folder


def test_mirror_with_right_checksum(tmp_path, mirror, monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    out = tmp_path / "raw" / "tinyshakespeare.txt"
    source = fetch_corpus(URL, SHA, out)
    assert out.read_bytes() == TEXT
    assert source == str(mirror / "tinyshakespeare.txt")


def test_mirror_file_may_carry_the_urls_name(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "input.txt").write_bytes(TEXT)
    out = tmp_path / "tinyshakespeare.txt"
    fetch_corpus(URL, SHA, out, mirror=str(folder))
    assert out.read_bytes() == TEXT


def test_wrong_checksum_names_both_digests_and_leaves_nothing(tmp_path, mirror):
    out_dir = tmp_path / "raw"
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as err:
        fetch_corpus(URL, wrong, out_dir / "tinyshakespeare.txt", mirror=str(mirror))
    assert wrong in str(err.value) and SHA in str(err.value)
    assert list(out_dir.iterdir()) == []


def test_file_url_without_mirror(tmp_path):
    source = tmp_path / "input.txt"
    source.write_bytes(TEXT)
    out = tmp_path / "out" / "tinyshakespeare.txt"
    assert fetch_corpus(source.as_uri(), SHA, out) == source.as_uri()
    assert out.read_bytes() == TEXT


def test_mirror_without_the_file_falls_back_to_the_url(tmp_path):
    source = tmp_path / "input.txt"
    source.write_bytes(TEXT)
    empty_mirror = tmp_path / "empty"
    empty_mirror.mkdir()
    out = tmp_path / "out" / "tinyshakespeare.txt"
    assert fetch_corpus(source.as_uri(), SHA, out, mirror=str(empty_mirror)) == source.as_uri()


def test_no_mirror_and_no_network_retries_then_explains(tmp_path):
    gone = (tmp_path / "missing.txt").as_uri()
    out = tmp_path / "out" / "tinyshakespeare.txt"
    with pytest.raises(DownloadError, match=r"after 3 attempts.*LLAMA_PE_MIRROR is not set.*For offline use"):
        fetch_corpus(gone, SHA, out, attempts=3, backoff_s=0.0)
    assert not out.exists()


def test_stage_script_reports_one_clear_line(tmp_path, mirror):
    params = tmp_path / "params.yaml"
    params.write_text(committed_text("params.yaml"))  # the real sha256 does not match TEXT
    out = tmp_path / "raw" / "tinyshakespeare.txt"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "stages" / "download.py"), "--params", str(params), "--out", str(out)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", MIRROR_ENV: str(mirror)},
    )
    assert result.returncode == 1
    assert "checksum mismatch" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()
