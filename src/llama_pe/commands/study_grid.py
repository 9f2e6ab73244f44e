"""A study's grid: encodings x seeds x sweeps, each point with the params.yaml its overrides make, checked
before anything is queued."""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llama_pe.errors import LlamaPeError
from llama_pe.positions.catalogue import ENCODINGS, hf_encoding
from llama_pe.settings.config import config_from_dict, flat_params
from llama_pe.settings.yaml12 import load_yaml
from llama_pe.tracking.dvc_queue import (
    StudyError,
)

GRID_KEYS = {"model.pos": "--pos", "model.impl": "--hf", "train.seed": "--seeds"}


@dataclass(frozen=True)
class Point:
    """One experiment of the grid: its overrides and the params.yaml they make."""

    label: str
    overrides: tuple[str, ...]
    params: dict[str, Any] = field(compare=False, hash=False, repr=False)


# ---------------------------------------------------------------------------------------------- the grid


def parse_grid(
    pos: str, seeds: str, hf: bool, sets: list[str], params_file: Path, sweeps: Iterable[str] = ()
) -> list[Point]:
    """The grid's points, seed by seed (a grid stopped halfway holds whole seeds), each checked like params.yaml."""
    encodings = _encodings(pos, hf)
    seed_values = _seeds(seeds)
    base = load_yaml(params_file.read_text(encoding="utf-8"))
    common = [_checked_set(item, base) for item in sets]
    swept = parse_sweeps(sweeps, base, common)
    combinations = list(itertools.product(*([f"{key}={value}" for value in values] for key, values in swept)))
    variants = [(f"{name} native", ("model.impl=native", f"model.pos={name}")) for name in encodings]
    if hf:
        variants.append((f"{hf_encoding()} hf", ("model.impl=hf", f"model.pos={hf_encoding()}")))
    points: dict[str, Point] = {}
    for seed in seed_values:
        for combination in combinations:
            for variant, grid_overrides in variants:
                label = " ".join((f"{variant} seed {seed}", *combination))
                overrides = (*grid_overrides, f"train.seed={seed}", *combination, *common)
                point = Point(label, overrides, _apply(params_file, overrides, label))
                # --pos rope,rope or --sweep train.lr=0.002,2e-3: one params.yaml, one experiment
                points.setdefault(json.dumps(point.params, sort_keys=True), point)
    return list(points.values())


def check_baseline_in_grid(points: list[Point], baseline: list[str]) -> None:
    """The report pairs every group with the baseline's runs: a grid without a point of the baseline would train for
    hours and then stop at its report."""
    import pandas as pd

    from llama_pe.analysis.experiments import SCALING, matching
    from llama_pe.analysis.pairing import baseline_conditions

    frame = pd.DataFrame([flat_params(point.params) for point in points])
    trained = [condition for condition in baseline if condition.partition("=")[0] != SCALING]  # scaling: a report view
    conditions = baseline_conditions(frame, trained)
    if conditions and not matching(frame, conditions).any():
        wanted = ", ".join(f"{key}={value}" for key, value in conditions.items())
        example = frame["model.pos"].iloc[0]
        raise StudyError(
            f"--baseline {wanted}: no point of this grid is the baseline, and the report pairs every group with it; "
            f"add it to the grid (--pos, --hf) or name a point of the grid, such as --baseline model.pos={example}"
        )


def parse_sweeps(sweeps: Iterable[str], params: dict[str, Any], sets: list[str]) -> list[tuple[str, list[str]]]:
    """--sweep KEY=V1,V2,... as (key, values), each key a param that neither the grid nor -S sets."""
    set_keys = {item.partition("=")[0] for item in sets}
    swept: dict[str, list[str]] = {}
    for item in sweeps:
        key, sep, text = item.partition("=")
        given = f"--sweep {item}"
        if not sep:
            raise StudyError(f"{given}: expected KEY=V1,V2,..., such as --sweep train.lr=0.001,0.002")
        _checked_key(key, params, given)
        if key in set_keys:
            raise StudyError(f"{given}: -S sets {key} for the whole grid too; give it to one of them")
        if key in swept:
            raise StudyError(f"{given}: {key} is swept twice; give all its values to one --sweep")
        values = [value.strip() for value in split_values(text)]
        if not all(values):
            raise StudyError(f"{given}: expected values separated by commas, none empty, such as {key}=V1,V2")
        swept[key] = list(dict.fromkeys(values))
    return list(swept.items())


def split_values(text: str) -> list[str]:
    """V1,V2,... split at the commas outside brackets and quotes: eval.contexts=[1,2],[1,2,4] is two values."""
    values, current, depth, quote = [], "", 0, ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            values.append(current)
            current = ""
            continue
        current += char
    return [*values, current]


def _encodings(pos: str, hf: bool) -> list[str]:
    """The native encodings of the grid; none (--pos '') when --hf is given: Hugging Face's Llama alone, so that it
    runs at a setting of its own (its chosen learning rate) without native rope beside it."""
    valid = list(ENCODINGS)
    names = [name.strip() for name in pos.split(",") if name.strip()]
    if not names and not hf:
        raise StudyError(
            f"--pos: expected encodings separated by commas; valid: {', '.join(valid)} (--pos '' only with --hf: "
            "Hugging Face's Llama alone)"
        )
    for name in names:
        if name not in valid:
            raise StudyError(f"--pos: unknown encoding {name!r}; valid: {', '.join(valid)}")
    return names


def _seeds(seeds: str) -> list[int]:
    try:
        values = [int(seed) for seed in seeds.split(",")]
    except ValueError:
        raise StudyError(f"--seeds: expected integers separated by commas, such as 0,1,2; got {seeds!r}") from None
    return list(dict.fromkeys(values))


def _checked_set(item: str, params: dict[str, Any]) -> str:
    key, sep, _ = item.partition("=")
    if not sep:
        raise StudyError(f"-S {item}: expected KEY=VALUE, such as -S train.max_steps=200")
    _checked_key(key, params, f"-S {item}")
    return item


def _checked_key(key: str, params: dict[str, Any], given: str) -> None:
    """A key the grid may set: a setting of params.yaml that --pos, --hf and --seeds do not set already."""
    if key in GRID_KEYS:
        raise StudyError(f"{given}: the grid sets {key}; use {GRID_KEYS[key]}")
    valid = flat_params(params)
    if key not in valid:
        raise StudyError(f"{given}: params.yaml has no {key}; valid keys: {', '.join(sorted(valid))}")


def _apply(params_file: Path, overrides: tuple[str, ...], label: str) -> dict[str, Any]:
    """params.yaml as `dvc exp run -S` will write it (DVC's own override parser), checked as every stage checks it."""
    from dvc.utils.hydra import apply_overrides

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "params.yaml"
        shutil.copy(params_file, copy)
        try:
            apply_overrides(copy, list(overrides))
        except Exception as err:  # DVC's parser raises its own types; the cause names the bad value
            raise StudyError(f"{label}: DVC cannot apply {' '.join(overrides)}: {err.__cause__ or err}") from None
        params = load_yaml(copy.read_text(encoding="utf-8"))
    try:
        config_from_dict(params)
    except LlamaPeError as err:
        raise StudyError(f"{label}: {err}") from None
    return params
