"""How to get a damaged or lost pipeline output back, told by what DVC can really do in this repository now."""

from __future__ import annotations

import os
from pathlib import Path


def restore_advice(path: str | Path) -> str | None:
    """A command that brings `path` back, or None when it is no output of a stage of the DVC repo around it.

    `dvc checkout --force` where DVC's cache holds the copy that dvc.lock records (plain `dvc checkout` refuses to
    overwrite a changed file); otherwise the stage has to run again (a fresh clone's cache is empty), or, where a
    DVC remote is configured, `dvc pull` may fetch it.
    """
    found = _stage_output(Path(path))
    if found is None:
        return None
    stage, output, root, cached, has_remote = found
    here = os.getcwd()
    inside = here == root or here.startswith(root + os.sep)
    cd = "" if inside else f"cd {root} && "  # DVC's commands work inside the repository only
    output = os.path.relpath(output, here if inside else root)
    if cached:
        # Not `dvc repro`: DVC sees the changed output and runs its stage again, which for the model is training.
        return (
            f"restore the copy that dvc.lock records with `{cd}dvc checkout --force {output}` (in seconds; "
            f"a plain dvc repro would instead run the {stage} stage again to make it anew)"
        )
    pull = f", or fetch it with `{cd}dvc pull {output}` if the DVC remote has it" if has_remote else ""
    return (
        f"DVC's cache does not hold the copy that dvc.lock records (a fresh clone's cache is empty): make it again "
        f"with `{cd}dvc repro {stage}`{pull}"
    )


def _stage_output(path: Path) -> tuple[str, str, str, bool, bool] | None:
    """(stage, output's absolute path, repo root, is it in the cache, is a DVC remote configured), or None."""
    # DVC is slow to import and needed only on this error path.
    from dvc.exceptions import DvcException, NotDvcRepoError
    from dvc.repo import Repo

    target = os.path.abspath(path)
    try:
        with Repo(os.path.dirname(target) or ".", uninitialized=False) as repo:
            for stage in repo.index.stages:
                for out in stage.outs:
                    if target == out.fs_path or target.startswith(out.fs_path + os.sep):
                        cached = out.use_cache and bool(out.hash_info) and not out.changed_cache()
                        remote = bool(repo.config["core"].get("remote"))
                        return stage.addressing, out.fs_path, repo.root_dir, cached, remote
    except (NotDvcRepoError, DvcException, OSError):
        return None
    return None
