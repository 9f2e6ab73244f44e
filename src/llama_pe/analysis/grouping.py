"""Groups of experiments (the runs that differ only in train.seed) and what each group's metrics are: n, mean,
std and a Student's t 95% interval."""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

from llama_pe.analysis.experiments import (
    CODE,
    MACHINE,
    SCALING,
    SEED,
    ReportError,
    _is_null,
    context_multiple,
    metric_columns,
    param_columns,
)
from llama_pe.analysis.statistics import t_interval
from llama_pe.settings.architecture import SIZES

# ---------------------------------------------------------------------------------------------- aggregation


def group_keys(frame: pd.DataFrame) -> list[str]:
    """The params that vary among the experiments, train.seed aside, and the code and the machine if they vary:
    what tells one group from another. The code only where it varies among runs of the same params: each encoding
    has a code version of its own (its own file), so a code that changes with model.pos tells no group apart."""
    candidates = [*param_columns(frame), *(c for c in (MACHINE,) if c in frame)]
    keys = [c for c in candidates if c != SEED and frame[c].map(repr).nunique() > 1]
    if CODE in frame and frame[CODE].map(repr).nunique() > 1:
        same_params = frame.groupby([frame[k].map(repr) for k in keys], sort=False) if keys else [(None, frame)]
        if any(group[CODE].map(repr).nunique() > 1 for _, group in same_params):
            keys.append(CODE)
    return keys


def check_one_run_per_seed(frame: pd.DataFrame, keys: list[str]) -> None:
    """Pairing by seed needs one run per group and seed; two runs that differ in their results are not one run."""
    for label, group in iter_groups(frame, keys):
        repeated = group[group[SEED].duplicated(keep=False)]
        if not repeated.empty:
            seed = repeated[SEED].iloc[0]
            names = ", ".join(repeated.loc[repeated[SEED] == seed, "name"].astype(str))
            raise ReportError(
                f"{label}: several runs with {SEED}={seed} ({names}) of the same params and code but other results; "
                "keep one: remove the others with `dvc exp remove NAME`, or select with --only"
            )


def group_label(row: pd.Series | dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{k}={None if pd.isna(row[k]) else row[k]}" for k in keys) or "all"


def short_label(row: pd.Series | dict[str, Any], keys: list[str]) -> str:
    """The group's values alone (`native rope`, `native rope + yarn`), for the legends of the figures."""
    parts = []
    for key in keys:
        if key == CODE:
            parts.append(f"code {row[key]}")
        elif key == SCALING:
            parts += [] if row[key] == "none" else [f"+ {row[key]}"]  # unscaled: the run as trained, no suffix
        else:
            parts.append(str(row[key]))
    return " ".join(parts) or "all"


def summarize(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per group and metric: n (runs with a value), mean, std, the 95% interval's bounds and, where no run
    has a value, why (`reason`)."""
    rows = []
    for label, group in iter_groups(frame, keys):
        for metric in metric_columns(frame):
            values = group[metric].dropna().astype(float).to_numpy()  # a null stays out: never averaged in
            mean, std, half = t_interval(values)
            rows.append(
                {
                    "group": label,
                    **{k: group[k].iloc[0] for k in keys},
                    "metric": metric,
                    "n": len(values),
                    "mean": mean,
                    "std": std,
                    "ci95_low": mean - half,
                    "ci95_high": mean + half,
                    "reason": null_reason(group, metric) if len(values) == 0 else None,
                }
            )
    return pd.DataFrame(rows)


# ppl_at_0p5x: the test perplexity with windows of 0.5 × train.context (llama_pe.core.evaluate.metric_suffix).
LAYER_METRIC = re.compile(r"_l(?P<k>\d+)_")


def layer_count(run: pd.Series) -> tuple[int, str] | None:
    """The run's number of layers and the param that sets it (model.n_layers, else model.size's preset)."""
    n_layers, size = run.get("model.n_layers"), run.get("model.size")
    if not _is_null(n_layers):
        return int(n_layers), f"model.n_layers={int(n_layers)}"
    if size in SIZES:
        return SIZES[size].n_layers, f"model.size={size}"
    return None


def null_reason(group: pd.DataFrame, metric: str) -> str:
    """Why no run of the group has the metric, told from what its runs do have (the evaluate stage records a null
    with its reason; DVC's metrics keep only the null)."""
    first = group.iloc[0]
    if first.get(SCALING, "none") != "none":
        return "scaled evaluation (ppl_at_Kx only)"
    if (layer := LAYER_METRIC.search(metric)) and (layers := layer_count(first)) and int(layer["k"]) >= layers[0]:
        n, source = layers
        shown = f"{n} layers (0-{n - 1}" if n > 1 else "1 layer (0"
        return f"no layer {layer['k']}: the model has {shown}; {source})"
    encoding = first.get("model.pos", "these")
    multiple = context_multiple(metric)
    scored_at_1x = "ppl_at_1x" in group and group["ppl_at_1x"].notna().any()
    if multiple is not None and multiple > 1 and scored_at_1x:  # scored up to the training length, not past it
        if first.get("data.split") == "random_chunks":
            return "data.split=random_chunks has no text longer than train.context + 1 tokens"
        return f"{encoding} positions stop at train.context"
    return f"not defined for model.pos={encoding}" if "model.pos" in group else "no run recorded it"


def iter_groups(frame: pd.DataFrame, keys: list[str]):
    if not keys:
        yield "all", frame
        return
    for _, group in frame.groupby([frame[k].map(repr) for k in keys], sort=False):
        yield group_label(group.iloc[0], keys), group
