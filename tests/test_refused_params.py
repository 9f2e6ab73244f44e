"""A value the check stage refuses names where it now is: `dvc exp run -S` wrote it into params.yaml and left it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from llama_pe.settings.refused_params import restore_hint

PARAMS = "model:\n  pos: rope\n  dim: 32\ntrain:\n  lr: 0.002\n  patience: null\n"


@pytest.fixture
def repo(tmp_path) -> Path:
    (tmp_path / "params.yaml").write_text(PARAMS)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "params.yaml"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "params"], cwd=tmp_path, check=True)
    return tmp_path


def test_a_changed_value_names_the_committed_one_and_both_ways_back(repo, monkeypatch):
    monkeypatch.setenv("DVC_STAGE", "check")  # run by DVC: its -S wrote the value
    (repo / "params.yaml").write_text(PARAMS.replace("lr: 0.002", "lr: -0.001"))
    assert restore_hint(repo / "params.yaml") == (
        "params.yaml now holds train.lr: -0.001 (committed: 0.002) as `dvc exp run -S` wrote it, and it stays there "
        "for the next run: `git checkout params.yaml` restores the committed file, or `-S train.lr=0.002` the "
        "committed value"
    )


def test_a_misspelt_key_is_named_as_not_in_the_committed_file(repo, monkeypatch):
    monkeypatch.delenv("DVC_STAGE", raising=False)  # edited by hand: no claim about dvc exp run
    (repo / "params.yaml").write_text(PARAMS + "  poss: alibi\n")
    assert restore_hint(repo / "params.yaml") == (
        "params.yaml now holds train.poss: alibi (not in the committed file): `git checkout params.yaml` restores "
        "the committed file"
    )


def test_no_hint_for_the_committed_file_a_file_outside_git_or_a_queued_experiments_copy(repo, tmp_path_factory):
    assert restore_hint(repo / "params.yaml") is None  # as committed (DVC may rewrite nulls: same values)
    outside = tmp_path_factory.mktemp("no-git") / "params.yaml"
    outside.write_text(PARAMS.replace("dim: 32", "dim: 5"))
    assert restore_hint(outside) is None
    queued = repo / ".dvc/tmp/exps/tmpabc/params.yaml"
    queued.parent.mkdir(parents=True)
    queued.write_text(PARAMS.replace("dim: 32", "dim: 5"))
    assert restore_hint(queued) is None  # its own copy: the workspace's params.yaml is untouched
