"""Which code made an experiment: dvc.yaml's stages and every source file they run, as one short hash.

The same hash for a revision (an experiment's commit, read from git) and for the workspace (what a queued
experiment will run: DVC copies the files git tracks, staged ones included), so a result recorded on one machine is
recognised on another (analysis.ledger). A stage's results are made by its command, dependencies and params (not by
how its outputs are stored); its source files are the dependencies that git tracks and no stage makes, each hashed
as git stores it (its blob id), so neither a checkout's line endings nor its file times change the hash.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from llama_pe.errors import LlamaPeError
from llama_pe.settings.yaml12 import load_yaml

CODE_DIGITS = 12  # of the sha256: short enough to read in a table, far from colliding among a project's versions


class CodeVersionError(LlamaPeError, ValueError):
    """The code of a revision or of the workspace cannot be read (no dvc.yaml, not a git repository)."""


def stage_definitions(dvc_yaml: str) -> dict[str, Any]:
    """What makes each stage's results: its command, dependencies and params."""
    stages = (load_yaml(dvc_yaml) or {}).get("stages", {})
    return {name: {key: stage.get(key) for key in ("cmd", "deps", "params")} for name, stage in stages.items()}


def source_dependencies(dvc_yaml: str) -> list[str]:
    """The stages' dependencies that no stage makes (files and folders): the code and inputs under version control."""
    stages = (load_yaml(dvc_yaml) or {}).get("stages", {})
    made = {
        _path(out) for stage in stages.values() for kind in ("outs", "metrics", "plots") for out in stage.get(kind, [])
    }
    deps = {dep for stage in stages.values() for dep in stage.get("deps", [])}
    return sorted(d for d in deps if not any(d == m or d.startswith(f"{m}/") for m in made))


def _path(entry: str | dict[str, Any]) -> str:
    return entry if isinstance(entry, str) else next(iter(entry))  # "- metrics/train.json: {cache: false}"


def source_files(repo: Path, dvc_yaml: str | None = None) -> list[str]:
    """The files of the workspace's source dependencies that git tracks (staged new files included)."""
    dvc_yaml = (repo / "dvc.yaml").read_text(encoding="utf-8") if dvc_yaml is None else dvc_yaml
    deps = source_dependencies(dvc_yaml)
    if not deps:
        return []
    listed = _git(repo, "ls-files", "-z", "--", *deps)
    return sorted({path for path in listed.split("\0") if path and (repo / path).is_file()})


def code_version(repo: Path, rev: str | None = None) -> str:
    """A short hash of the stages and their source files at `rev`, or in the workspace when rev is None."""
    if rev is None:
        try:
            dvc_yaml = (repo / "dvc.yaml").read_text(encoding="utf-8")
        except OSError as err:
            raise CodeVersionError(f"{repo}: no dvc.yaml to tell the code by ({err.strerror})") from None
        files = source_files(repo, dvc_yaml)
        blobs = _git(repo, "hash-object", "--", *files).split() if files else []
        listing = dict(zip(files, blobs, strict=True))
    else:
        dvc_yaml = _git(repo, "show", f"{rev}:dvc.yaml")
        deps = source_dependencies(dvc_yaml)
        tree = _git(repo, "ls-tree", "-r", "-z", rev, "--", *deps) if deps else ""
        listing = {}
        for entry in filter(None, tree.split("\0")):
            meta, path = entry.split("\t", 1)  # "100644 blob <sha>\t<path>"
            if meta.split()[1] == "blob":
                listing[path] = meta.split()[2]
    text = json.dumps(stage_definitions(dvc_yaml), sort_keys=True) + "".join(
        f"\n{path} {blob}" for path, blob in sorted(listing.items())
    )
    return hashlib.sha256(text.encode()).hexdigest()[:CODE_DIGITS]


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    if done.returncode != 0:
        raise CodeVersionError(f"git {' '.join(args[:3])} in {repo} failed: {done.stderr.strip()}")
    return done.stdout
