"""Where a refused setting is: `dvc exp run -S KEY=VALUE` writes its values into the workspace's params.yaml before
the check stage reads them, and leaves them there when the check refuses one. The next run, with other `-S`
values, then fails on a key the user never typed there; the check's error says which keys differ from the
committed file and how to restore them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from llama_pe.settings.config import flat_params
from llama_pe.settings.yaml12 import YAMLError, load_yaml

QUEUED_COPY = ".dvc/tmp/exps"  # where DVC's queue runs an experiment, in a copy of its own: the workspace is untouched
MISSING = object()


def restore_hint(params: Path) -> str | None:
    """The keys in which params.yaml differs from HEAD's, and the command that restores them; None where the file is
    the committed one, is not in git, or is a queued experiment's own copy."""
    params = Path(params).absolute()
    if QUEUED_COPY in params.as_posix():
        return None
    shown = subprocess.run(["git", "show", f"HEAD:./{params.name}"], cwd=params.parent, capture_output=True, text=True)
    if shown.returncode != 0:
        return None  # no git, no commit, or a file git does not track: nothing to restore from
    try:
        committed = flat_params(load_yaml(shown.stdout) or {})
        now = flat_params(load_yaml(params.read_text(encoding="utf-8")) or {})
    except (OSError, YAMLError, AttributeError):
        return None  # a file that does not parse: the check's own error says so
    changed = [key for key in now if key in committed and now[key] != committed[key]]
    added = [key for key in now if key not in committed]
    removed = [key for key in committed if key not in now]
    if not (changed or added or removed):
        return None
    held = [
        *(f"{key}: {_shown(now[key])} (committed: {_shown(committed[key])})" for key in changed),
        *(f"{key}: {_shown(now[key])} (not in the committed file)" for key in added),
        *(f"{key} (removed)" for key in removed),
    ]
    under_dvc = (
        " as `dvc exp run -S` wrote it, and it stays there for the next run" if os.environ.get("DVC_STAGE") else ""
    )
    fixes = [f"`git checkout {params.name}` restores the committed file"]
    if changed and not (added or removed):
        fixes.append(f"`-S {' -S '.join(f'{key}={_shown(committed[key])}' for key in changed)}` the committed value")
    return f"{params.name} now holds {'; '.join(held)}{under_dvc}: {', or '.join(fixes)}"


def _shown(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()
