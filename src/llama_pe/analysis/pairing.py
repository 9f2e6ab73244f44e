"""Every group against the baseline, seed by seed: paired differences, their intervals and tests, Holm's
correction within each metric's family, and the verdicts they support."""

from __future__ import annotations

import io
import math
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llama_pe.analysis.experiments import (
    DEFAULT_BASELINE,
    SCALING,
    SEED,
    VAL_CURVE,
    ReportError,
    _parse_condition,
    condition,
    log,
    matching,
    metric_columns,
)
from llama_pe.analysis.grouping import group_keys, group_label, iter_groups, null_reason
from llama_pe.analysis.selection import _shown
from llama_pe.analysis.statistics import ALPHA, detectable_difference, holm, paired_t_p_value, t_interval
from llama_pe.metrics import (
    DEFAULT_PRIMARY,
    LOWER,
    SCALED_PPL,
    Role,
    has_role,
    is_judged,
    judged_patterns,
    metric_row,
)

NOISE = "not distinguishable from seed noise"


def paired_differences(frame: pd.DataFrame, keys: list[str], baseline: dict[str, Any]) -> pd.DataFrame:
    """Every group against the baseline group, seed by seed: the mean difference, its 95% interval, the paired
    t-test's p-value, that p adjusted by Holm's method within the metric's family (every group against the
    baseline on that metric) and the family's size, the smallest difference detectable at 80% power, a verdict."""
    is_baseline = matching(frame, baseline)
    base = frame[is_baseline]
    wanted = ", ".join(f"{k}={v}" for k, v in baseline.items())
    if not baseline:
        raise ReportError(
            f"the groups differ in {', '.join(keys)}, not in what the default baseline names "
            f"({', '.join(DEFAULT_BASELINE)}): give --baseline KEY=VALUE of one group"
        )
    if base.empty:
        raise ReportError(f"--baseline {wanted}: no experiment matches it; give --baseline KEY=VALUE of one group")
    if sum(1 for _ in iter_groups(base, keys)) > 1:
        raise ReportError(ambiguous_baseline(frame, keys, baseline))
    base_by_seed = base.set_index(SEED)
    rows = []
    first_with: dict[tuple, str] = {}  # (metric, seeds and differences) -> the first group that has them
    for label, group in iter_groups(frame[~is_baseline], keys):
        if not set(group[SEED]) & set(base_by_seed.index):
            raise ReportError(
                f"{label}: none of its runs ({SEED} {_seeds(group)}) pairs with a run of the baseline "
                f"({SEED} {_seeds(base)}); run the same seeds for both, or choose another --baseline"
            )
        for metric in compared_metrics(frame):
            paired = group.set_index(SEED)[metric].astype(float) - base_by_seed[metric].astype(float)
            diffs = paired.dropna().to_numpy()  # only seeds where both runs have a value
            mean, std, half = t_interval(diffs)
            same_as = first_with.setdefault((metric, tuple(paired.dropna().items())), label)
            rows.append(
                {
                    "group": label,
                    "metric": metric,
                    "n_pairs": len(diffs),
                    "mean_diff": mean,
                    "std_diff": std,
                    "ci95_low": mean - half,
                    "ci95_high": mean + half,
                    "p_value": paired_t_p_value(diffs) if is_judged(metric) else math.nan,  # no verdict, no test
                    "min_detectable_diff": detectable_difference(std, len(diffs)) if is_judged(metric) else math.nan,
                    "same_as": same_as if same_as != label and np.any(diffs) else None,  # all 0: no test to repeat
                    "unpaired": unpaired_reason(group, base, metric) if len(diffs) == 0 else None,
                }
            )
    return with_verdicts(pd.DataFrame(rows))


def ambiguous_baseline(frame: pd.DataFrame, keys: list[str], baseline: dict[str, Any]) -> str:
    """Why the baseline matches several groups, and options that make it one: --select where the keys those groups
    differ in are swept within every group (each group then keeps one value); --only with one of the values found,
    the one most groups have first (a study's, not HEAD's committed run's); --baseline naming that value, where
    every other group pairs with it by seed."""
    base = frame[matching(frame, baseline)]
    matched = [label for label, _ in iter_groups(base, keys)]
    apart = [k for k in keys if base[k].map(repr).nunique() > 1]  # what the matched groups differ in
    wanted = ", ".join(f"{k}={v}" for k, v in baseline.items())
    message = f"--baseline {wanted}: matches {len(matched)} groups ({'; '.join(matched)}), which differ in "
    message += ", ".join(apart)
    others = [k for k in keys if k not in apart]
    unswept = next((group for _, group in iter_groups(frame, others) if _count_groups(group, apart) < 2), None)
    if unswept is None:
        message += f"; report each group at its best value of the sweep: `--select {','.join(apart)}`; or"
    else:
        message += (
            f"; {', '.join(apart)} {'is' if len(apart) == 1 else 'are'} not swept in every group "
            f"({group_label(unswept.iloc[0], others)} has "
            f"{_shown(apart, unswept.iloc[0])} only), so --select cannot choose it;"
        )
    combos = [{k: group[k].iloc[0] for k in apart} for _, group in iter_groups(base, apart)]
    counts = {i: _count_groups(frame[matching(frame, combo)], keys) for i, combo in enumerate(combos)}
    ranked = sorted(counts, key=lambda i: -counts[i])
    options = [
        f"`{' '.join(f'--only {condition(k, v)}' for k, v in combos[i].items())}` "
        f"({counts[i]} group{'s' if counts[i] != 1 else ''})"
        for i in ranked
    ]
    message += f" keep one value: {' or '.join(options)}"
    first = {**baseline, **combos[ranked[0]]}
    if _pairs_with_every_group(frame, keys, first):
        given = [condition(k, v) for k, v in first.items() if (k, v) != (SCALING, "none")]  # the report adds it
        message += f"; or compare every group with one of them: `{' '.join(f'--baseline {c}' for c in given)}`"
    return message


def _count_groups(frame: pd.DataFrame, keys: list[str]) -> int:
    return sum(1 for _ in iter_groups(frame, keys)) if not frame.empty else 0


def _pairs_with_every_group(frame: pd.DataFrame, keys: list[str], baseline: dict[str, Any]) -> bool:
    is_baseline = matching(frame, baseline)
    seeds = set(frame.loc[is_baseline, SEED])
    return all(set(group[SEED]) & seeds for _, group in iter_groups(frame[~is_baseline], keys))


def with_verdicts(diffs: pd.DataFrame) -> pd.DataFrame:
    """The paired differences with p_holm and family_size, per metric, and the verdict that p_holm gives.

    A group whose differences repeat an earlier group's exactly (a RoPE-scaled evaluation up to the training
    context is its trained run's, `same_as`) is the same test, not another member of the family: it takes that
    group's adjusted p.
    """
    if diffs.empty:
        return diffs
    repeated = diffs["same_as"].map(lambda same_as: isinstance(same_as, str))  # pandas reads None as NaN
    by_metric = diffs["p_value"].mask(repeated).groupby(diffs["metric"], sort=False)
    diffs = diffs.assign(
        p_holm=by_metric.transform(lambda p: holm(p.to_numpy())),
        family_size=by_metric.transform(lambda p: int(p.notna().sum())),
    )
    adjusted = diffs.set_index(["group", "metric"])["p_holm"]
    for index in diffs.index[repeated]:
        diffs.loc[index, "p_holm"] = adjusted[(diffs.at[index, "same_as"], diffs.at[index, "metric"])]
    judged = [
        reason if isinstance(reason, str) else verdict(metric, mean, p_holm, n)  # pandas reads None as NaN
        for reason, metric, mean, p_holm, n in zip(
            diffs["unpaired"], diffs["metric"], diffs["mean_diff"], diffs["p_holm"], diffs["n_pairs"], strict=True
        )
    ]
    return diffs.drop(columns="unpaired").assign(verdict=judged)


def compared_metrics(frame: pd.DataFrame) -> list[str]:
    """The metrics that groups are compared on: every metric but the timings (llama_pe.metrics.Role.TIMING)."""
    return [metric for metric in metric_columns(frame) if not has_role(metric, Role.TIMING)]


def unpaired_reason(group: pd.DataFrame, base: pd.DataFrame, metric: str) -> str:
    """Why no seed pairs a value of the group with one of the baseline."""
    if group[metric].isna().all():
        return f"n/a: {null_reason(group, metric)}"
    if base[metric].isna().all():
        return f"n/a: baseline: {null_reason(base, metric)}"
    return f"n/a: no seed has a value in both (group {SEED} {_seeds(group)}, baseline {_seeds(base)})"


def _seeds(frame: pd.DataFrame) -> str:
    return ", ".join(str(seed) for seed in sorted(frame[SEED].unique()))


ONE_PAIR = "(1 pair: no interval, no verdict)"
# Every pair the same value (a RoPE-scaled evaluation up to the training context is its run's own): no test, and no
# member of the metric's family.
IDENTICAL = "identical to the baseline"


def verdict(metric: str, mean_diff: float, p_holm: float, n_pairs: int) -> str:
    """better or worse when the Holm-adjusted p-value of the paired t-test is below ALPHA; else seed noise."""
    if not is_judged(metric):
        return "-"
    if n_pairs < 2:
        return ONE_PAIR
    if math.isnan(p_holm):
        return IDENTICAL
    if p_holm >= ALPHA:
        return NOISE
    return "better" if (mean_diff < 0) == (metric_row(metric).better == LOWER) else "worse"


def primary_endpoints(names: Iterable[str] | None) -> tuple[str, ...]:
    """--primary as metric names, checked against the metrics table before any work; None: the table's default."""
    if names is None:
        return DEFAULT_PRIMARY
    names = tuple(dict.fromkeys(name.strip() for name in names if name.strip()))
    wrong = [name for name in names if not is_judged(name) or SCALED_PPL.matches(name)]
    if wrong or not names:
        problem = f"--primary {','.join(wrong)}: not a metric that gets a verdict" if wrong else "--primary: empty"
        raise ReportError(
            f"{problem}; valid: {', '.join(judged_patterns())}, <K> a multiple of train.context (1, 8, 0p5) "
            f"(default: {','.join(DEFAULT_PRIMARY)})"
        )
    return names


def baseline_conditions(frame: pd.DataFrame, baseline: list[str]) -> dict[str, Any]:
    """--baseline KEY=VALUE as a dict; by default native rope, on the keys that vary among the experiments."""
    conditions = baseline or [c for c in DEFAULT_BASELINE if c.split("=")[0] in group_keys(frame)]
    return dict(_parse_condition(c, frame) for c in conditions)


def read_val_curves(repo: str | Path, frame: pd.DataFrame) -> pd.DataFrame:
    """Each experiment's validation loss by tokens seen, read from its own DVCLive files at its own revision."""
    from dvc.api import DVCFileSystem

    curves = []
    for name, rev in zip(frame["name"], frame["rev"], strict=True):
        present = subprocess.run(["git", "cat-file", "-e", f"{rev}^{{commit}}"], cwd=repo, capture_output=True)
        if present.returncode != 0:  # a ledger's run of another machine: its experiment stayed there
            log.warning("%s (%s) is not in this repository: left out of val_curves.png", name, rev)
            continue
        fs = DVCFileSystem(str(repo), rev=rev)
        try:
            loss, tokens = (
                pd.read_csv(io.StringIO(fs.read_text(f"{VAL_CURVE}/{column}.tsv")), sep="\t")[["step", column]]
                for column in ("loss", "tokens")
            )
        except FileNotFoundError:
            log.warning("%s (%s) has no validation curve at %s: left out of val_curves.png", name, rev, VAL_CURVE)
            continue
        curves.append(loss.merge(tokens, on="step").assign(name=name))
    return pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=["name", "step", "tokens", "loss"])
