"""The tables of docs/results.md, made from a committed report's files (summary.csv, paired_differences.csv,
selection.csv, runs.csv), so no number there is typed by hand. docs/results.md holds each between its markers; a
test fails when a block differs from what the report's files give, and `python -m llama_pe.analysis.results_tables`
writes them again after `llama-pe report` has rebuilt reports/.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from llama_pe.analysis.grouping import iter_groups
from llama_pe.analysis.local_window import local_window_verdicts
from llama_pe.analysis.report import runs_frame
from llama_pe.analysis.verdict_table import paired_cell
from llama_pe.io import atomic_path

RESULTS = "docs/results.md"
START = "<!-- table {name}: made from {folder}/ by llama_pe.analysis.results_tables; do not edit -->"
END = "<!-- table {name}: end -->"
SCALING = "eval.rope_scaling_method"


def _encoding(row: pd.Series) -> str:
    return "HF Llama (rope)" if row.get("model.impl") == "hf" else str(row["model.pos"])


def _lr(row: pd.Series) -> str:
    scale = row.get("train.pos_lr_scale", 1.0)
    lr = f"{float(row['train.lr']):g}"
    return lr if pd.isna(scale) or float(scale) == 1.0 else f"{lr}, position parameters ×{float(scale):g}"


def _mean_and_std(summary: pd.DataFrame, group: str, metric: str) -> tuple[float, float]:
    """The group's mean and std of the metric over its seeds (NaN where summary.csv has none)."""
    row = summary[(summary["group"] == group) & (summary["metric"] == metric)]
    return (math.nan, math.nan) if row.empty else (float(row["mean"].iloc[0]), float(row["std"].iloc[0]))


def _mean_std(summary: pd.DataFrame, group: str, metric: str, digits: int) -> str:
    mean, std = _mean_and_std(summary, group, metric)
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _groups(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per trained group (no RoPE-scaled view), the baseline's order as the report lists them."""
    groups = summary.drop_duplicates("group")
    if SCALING in groups:
        groups = groups[groups[SCALING].fillna("none") == "none"]
    is_rope = (groups["model.pos"] == "rope") & (groups.get("model.impl", "native") != "hf")
    return pd.concat([groups[is_rope], groups[~is_rope]])  # the baseline first


def _diffs(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "paired_differences.csv").set_index(["group", "metric"])


def main_table(folder: Path) -> str:
    """Every encoding at the training length: validation loss, test perplexity and held-out bits per character."""
    summary = pd.read_csv(folder / "summary.csv")
    diffs = _diffs(folder)
    lines = [
        "| encoding | lr | best val loss | vs rope | test ppl | vs rope | held-out bpc |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for _, row in _groups(summary).iterrows():
        group = row["group"]
        against = [
            paired_cell(diffs, group, m) if (group, m) in diffs.index else "baseline"
            for m in ("best_val_loss", "test_ppl")
        ]
        loss, ppl = _mean_std(summary, group, "best_val_loss", 3), _mean_std(summary, group, "test_ppl", 1)
        bpc = _mean_std(summary, group, "holdout_bpc", 3)
        lines.append(f"| {_encoding(row)} | {_lr(row)} | {loss} | {against[0]} | {ppl} | {against[1]} | {bpc} |")
    return "\n".join(lines) + "\n"


def selection_table(folder: Path) -> str:
    """Each encoding's chosen learning rate and every candidate's best validation loss (seed 0, and 1 where it
    decided)."""
    selection = pd.read_csv(folder / "selection.csv")
    lines = ["| encoding | chosen lr | decided by | best val loss of each candidate |", "| --- | --- | --- | --- |"]
    for _, row in selection.iterrows():
        chosen = [float(v) for v in str(row["chosen"]).split(",")]
        lr = _lr(pd.Series({"train.lr": chosen[0], "train.pos_lr_scale": chosen[1] if len(chosen) > 1 else 1.0}))
        candidates = re.sub(r"(\d+\.\d+), (\d+\.\d+):", _candidate, str(row["candidates"]))
        lines.append(f"| {_encoding(row)} | {lr} | {row['decided_by']} | {candidates} |")
    return "\n".join(lines) + "\n"


def _candidate(match: re.Match) -> str:
    scale = float(match[2])
    return f"{match[1]}:" if scale == 1.0 else f"{match[1]} ×{scale:g}:"  # lr, position parameters' scale


def converged_table(folder: Path) -> str:
    """The converged regime against rope: validation loss, test perplexity, perplexity at 8× and the gain of context
    beyond the training length."""
    summary = pd.read_csv(folder / "summary.csv")
    diffs = _diffs(folder)
    metrics = ("best_val_loss", "test_ppl", "ppl_at_8x", "context_gain_at_8x")
    lines = [
        "| against rope | best val loss | test ppl | ppl 8× | context_gain_at_8x |",
        "| --- | --- | --- | --- | --- |",
    ]
    for _, row in _groups(summary).iterrows():
        if (row["group"], metrics[0]) not in diffs.index:
            continue  # the baseline
        cells = [paired_cell(diffs, row["group"], m) for m in metrics]
        lines.append(f"| {_encoding(row)} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def _mean(summary: pd.DataFrame, group: str, metric: str) -> float:
    return _mean_and_std(summary, group, metric)[0]


def _identity(row: pd.Series, keys: list[str]) -> tuple[str, ...]:
    """A group's values, alike however a file spelt them (1 and 1.0)."""
    return tuple(f"{float(row[k]):g}" if isinstance(row[k], int | float) else str(row[k]) for k in keys)


def _signed(value: float, digits: int) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.{digits}f}"


def context_table(folder: Path) -> str:
    """Context use at the training length's grid: perplexity at 1× and 8×, 8× against the model's own local window
    (run by run, its 95% interval), the gain of the far context, and the copy probe."""
    summary = pd.read_csv(folder / "summary.csv")
    diffs = _diffs(folder)
    runs = runs_frame(folder / "runs.csv")
    keys = [k for k in summary.columns[1 : list(summary.columns).index("metric")] if k in runs and k != SCALING]
    verdicts = local_window_verdicts(runs, keys)  # a row per group, in iter_groups' order
    windows = {_identity(group.iloc[0], keys): verdicts.iloc[i] for i, (_, group) in enumerate(iter_groups(runs, keys))}
    lines = [
        "| encoding | ppl 1× | ppl 8× | own local window | 8× − local window [95% CI] | context_gain_at_8x | vs rope | "
        "copy gain at L/4, text / random | largest \\|mean copy gain\\| at 2L–7L |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for _, row in _groups(summary).iterrows():
        group = row["group"]
        window = windows[_identity(row, keys)]
        against = (
            "n/a"
            if window["n"] == 0
            else f"{window['mean_diff']:+.1f} [{window['ci95_low']:+.1f}, {window['ci95_high']:+.1f}]"
        )
        gain = "n/a" if window["n"] == 0 else _mean_std(summary, group, "context_gain_at_8x", 4)
        vs = (
            paired_cell(diffs, group, "context_gain_at_8x")
            if (group, "context_gain_at_8x") in diffs.index
            else "baseline"
        )
        copy = [_mean(summary, group, f"copy_gain_{kind}_at_0p25x") for kind in ("text", "random")]
        far = [abs(_mean(summary, group, f"copy_gain_{k}_at_{m}x")) for k in ("text", "random") for m in (2, 4, 7)]
        far = [value for value in far if not math.isnan(value)]
        cells = [
            _encoding(row),
            f"{_mean(summary, group, 'ppl_at_1x'):.1f}",
            "n/a" if math.isnan(_mean(summary, group, "ppl_at_8x")) else f"{_mean(summary, group, 'ppl_at_8x'):.1f}",
            f"{_mean(summary, group, 'sliding_ppl_at_1x'):.1f}",
            window["verdict"] if str(window["verdict"]).startswith("n/a") else f"{against}: {window['verdict']}",
            gain,
            "n/a" if window["n"] == 0 else vs,
            f"{_signed(copy[0], 3)} / {_signed(copy[1], 3)}",
            f"{max(far):.3f}" if far else "n/a",
        ]
        lines.append(f"| {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def seeds_table(folder: Path) -> str:
    """The converged regime run by run (seeds in order), and the copy probe's group mean at 2L."""
    runs = pd.read_csv(folder / "runs.csv").sort_values(["train.seed"], kind="stable")
    lines = [
        "| encoding | best val loss | test ppl | ppl 8× / own local window | context_gain_at_8x | "
        "copy gain at 2L, text / random (mean) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for pos, group in runs.groupby("model.pos", sort=False):
        window = ", ".join(
            f"{a:.0f} / {b:.0f}" for a, b in zip(group["ppl_at_8x"], group["sliding_ppl_at_1x"], strict=True)
        )
        copy = [group[f"copy_gain_{kind}_at_2x"].mean() for kind in ("text", "random")]
        cells = [
            str(pos),
            ", ".join(f"{v:.3f}" for v in group["best_val_loss"]),
            ", ".join(f"{v:.1f}" for v in group["test_ppl"]),
            window,
            ", ".join(f"{v:+.3f}" for v in group["context_gain_at_8x"]),
            f"{copy[0]:+.3f} / {copy[1]:+.3f}",
        ]
        lines.append(f"| {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


TABLES: dict[str, tuple[str, Callable[[Path], str]]] = {
    "main": ("reports", main_table),
    "selection": ("reports", selection_table),
    "context": ("reports", context_table),
    "converged-seeds": ("reports/converged", seeds_table),
    "converged": ("reports/converged", converged_table),
}


def blocks(root: Path) -> dict[str, str]:
    """Each table between its markers, as docs/results.md holds it."""
    made = {}
    for name, (folder, make) in TABLES.items():
        start, end = START.format(name=name, folder=folder), END.format(name=name)
        made[name] = f"{start}\n{make(root / folder)}{end}"
    return made


def block_in(text: str, name: str) -> str | None:
    """The block `name` as the text holds it, markers included; None when it has none."""
    match = re.search(rf"<!-- table {name}: made from .*?<!-- table {name}: end -->", text, re.DOTALL)
    return match.group(0) if match else None


def rewrite(root: Path) -> None:
    """Write every block of docs/results.md again from the committed report's files."""
    path = root / RESULTS
    text = path.read_text(encoding="utf-8")
    for name, block in blocks(root).items():
        old = block_in(text, name)
        if old is None:
            raise SystemExit(f"{path}: no markers of table {name}; put `{START.format(name=name, folder='...')}` there")
        text = text.replace(old, block)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    rewrite(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("."))
