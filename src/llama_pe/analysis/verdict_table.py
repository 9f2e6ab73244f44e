"""The answer at a glance: one row per encoding, its difference from the baseline at the training length and at
the longest context, each with its verdict. `llama-pe report` writes it as verdicts.md; the README holds the
committed report's copy between markers, and a test keeps the two the same, so no number there is typed by hand.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from llama_pe.analysis.experiments import SCALING, matching
from llama_pe.analysis.grouping import iter_groups

AT_L = "best_val_loss"  # the selection metric, on validation: at the training length
AT_LONGEST = "ppl_at_8x"  # test perplexity at 8 × train.context: how an encoding extrapolates
IDENTITY = ("model.pos", "model.impl", SCALING)  # named by the row's encoding cell; other group keys are its settings
START, END = "<!-- verdicts: written by llama-pe report (verdicts.md); do not edit -->", "<!-- verdicts: end -->"


def verdict_markdown(frame: pd.DataFrame, keys: list[str], diffs: pd.DataFrame, baseline: dict[str, Any]) -> str:
    """The table as Markdown: the baseline first, then every group of the trained runs (no RoPE-scaled view)."""
    base_row = frame[matching(frame, baseline)].iloc[0]
    lines = [
        f"| encoding | settings | {AT_L} − baseline (at L) | {AT_LONGEST} − baseline (at 8×) |",
        "| --- | --- | --- | --- |",
        f"| {_encoding(base_row)} (baseline) | {_settings(base_row, keys)} | 0 | 0 |",
    ]
    by_group = diffs.set_index(["group", "metric"]) if not diffs.empty else None
    for label, group in iter_groups(frame, keys):
        row = group.iloc[0]
        if row.get(SCALING, "none") != "none" or matching(group, baseline).all():
            continue
        cells = [paired_cell(by_group, label, metric) for metric in (AT_L, AT_LONGEST)]
        lines.append(f"| {_encoding(row)} | {_settings(row, keys)} | {cells[0]} | {cells[1]} |")
    note = (
        "Mean paired difference over seeds [raw 95% t interval], Holm-corrected p of the two-sided paired t-test "
        "within the metric's family (every group against the baseline), and the verdict; next to *not "
        "distinguishable*, the smallest difference with 80% power. Below 0 is better for both."
    )
    return "\n".join([*lines, "", note]) + "\n"


def readme_block(markdown: str) -> str:
    """The table as the README holds it, between its markers."""
    return f"{START}\n{markdown}{END}"


def _encoding(row: pd.Series) -> str:
    name = str(row.get("model.pos"))
    return f"{name} (HF Llama)" if row.get("model.impl") == "hf" else name


def _settings(row: pd.Series, keys: list[str]) -> str:
    shown = [f"{k}={row[k]:g}" if isinstance(row[k], float) else f"{k}={row[k]}" for k in keys if k not in IDENTITY]
    return ", ".join(shown) or "-"


def paired_cell(by_group: pd.DataFrame | None, label: str, metric: str) -> str:
    if by_group is None or (label, metric) not in by_group.index:
        return "n/a"
    diff = by_group.loc[(label, metric)]
    if diff["n_pairs"] == 0 or math.isnan(diff["mean_diff"]):
        verdict = diff["verdict"] if isinstance(diff["verdict"], str) else "n/a"
        return verdict if verdict.startswith("n/a") else f"n/a: {verdict}"
    digits = 3 if abs(diff["mean_diff"]) < 1 else 1
    interval = f"{diff['mean_diff']:+.{digits}f} [{diff['ci95_low']:+.{digits}f}, {diff['ci95_high']:+.{digits}f}]"
    verdict = str(diff["verdict"])
    if verdict.startswith("not distinguishable") and not math.isnan(diff["min_detectable_diff"]):
        verdict = f"not distinguishable (beyond ±{diff['min_detectable_diff']:.{digits}f})"
    emphasis = f"**{verdict}**" if verdict.split(" ")[0] in ("better", "worse") else verdict
    return f"{interval}, Holm p {_p(diff['p_holm'])}: {emphasis}"


def _p(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.2g}" if value >= 0.001 else f"{value:.1e}"
