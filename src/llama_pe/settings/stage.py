"""What every stage script shares: logging set-up, turning project errors into one clear line, and refusing to let
DVC record params that the stage did not run with."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llama_pe.errors import ConfigError, LlamaPeError
from llama_pe.settings.yaml12 import YAMLError, load_yaml

log = logging.getLogger("llama_pe")

PARAMS_FILE = "params.yaml"  # DVC's default params file, and every stage's --params default


INTERRUPTED = "interrupted; `dvc repro` runs this stage again"
INTERRUPTED_EXIT = 130  # a shell's code for a process ended by Ctrl-C (128 + SIGINT)


def run_stage(main: Callable[[], None], interrupted: str = INTERRUPTED) -> None:
    """Run a stage's or command's main: a project error or Ctrl-C is one line (`interrupted`: what happens next),
    never a traceback."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        watched = watched_params()
        main()
        if watched:
            check_params_unchanged(watched)
    except LlamaPeError as err:
        log.error("%s", err)
        sys.exit(1)
    except KeyboardInterrupt:
        log.error("%s", interrupted)
        sys.exit(INTERRUPTED_EXIT)


# ---------------------------------------------------------------------------------------------- params guard
# DVC reads a stage's params for dvc.lock after the stage's command ends. If params.yaml changed meanwhile (another
# `dvc exp run -S` rewrote it, or an editor saved it), dvc.lock would pair the new values with outputs made from the
# old ones. A stage run by DVC therefore checks at its end that the params it depends on are still the ones it
# started with, and fails otherwise: DVC records nothing for a failed stage.


Watched = dict[Path, tuple[list[str] | None, dict[str, Any]]]  # file -> (its keys in dvc.yaml, their flat values)


def watched_params() -> Watched | None:
    """The params the running DVC stage depends on (dvc.yaml) and their values now; None outside `dvc repro`."""
    stage, root = os.environ.get("DVC_STAGE"), os.environ.get("DVC_ROOT")
    if not stage or not root:
        return None
    keys = stage_param_keys(Path(root), stage)
    return {path: (names, read_params(path, names)) for path, names in keys.items()}


def stage_param_keys(root: Path, stage: str) -> dict[Path, list[str] | None]:
    """The params files and keys that dvc.yaml lists for `stage` (None: the whole file); all of params.yaml where
    dvc.yaml or the stage cannot be read, which is stricter, never looser."""
    whole = {root / PARAMS_FILE: None}
    try:
        spec = load_yaml((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"][stage]
    except (OSError, YAMLError, KeyError, TypeError):
        return whole
    wdir = root / spec.get("wdir", ".")
    keys: dict[Path, list[str] | None] = {}
    for item in spec.get("params", []):
        if isinstance(item, str):
            names = keys.setdefault(wdir / PARAMS_FILE, [])
            if names is not None:
                names.append(item)
        elif isinstance(item, dict):
            for file, names in item.items():
                keys[wdir / file] = list(names) if names else None
    return keys


def read_params(path: Path, names: list[str] | None) -> dict[str, Any]:
    """Flat values ("model.pos": "rope") of the keys `names` (sections or dotted keys) in a YAML params file."""
    try:
        tree = load_yaml(path.read_text(encoding="utf-8")) or {}
    except (OSError, YAMLError) as err:
        return {"(the file)": f"unreadable: {type(err).__name__}"}
    if names is None:
        return _flatten(tree)
    values = {}
    for name in names:
        node: Any = tree
        for part in name.split("."):
            node = node.get(part, _MISSING) if isinstance(node, dict) else _MISSING
        values.update(_flatten({name: node}))
    return values


_MISSING = "(missing)"


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict) or not tree:
        return {prefix.rstrip("."): tree}
    flat = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}{key}."))
    return flat


def check_params_unchanged(started_with: Watched) -> None:
    changes = []
    for path, (names, old) in started_with.items():
        new = read_params(path, names)
        changes += [
            f"{key}: {old.get(key, _MISSING)!r} -> {new.get(key, _MISSING)!r}"
            for key in sorted(old.keys() | new.keys())
            if old.get(key, _MISSING) != new.get(key, _MISSING)
        ]
    if changes:
        stage = os.environ.get("DVC_STAGE", "this")
        raise ConfigError(
            f"params changed while the `{stage}` stage ran ({'; '.join(changes)}): its outputs were made with the "
            f"old values, so it fails and DVC records nothing; `dvc repro` runs it again with the values the params "
            f"file holds now"
        )
