"""comparison.md: the report in words and tables (selection, verdicts, context use, settings), every number
from the frames the report computed."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from llama_pe.analysis.experiments import (
    CODE,
    CONTEXT_METRIC,
    SEED,
    matching,
)
from llama_pe.analysis.grouping import group_keys, iter_groups
from llama_pe.analysis.local_window import HURT, LOCAL_WINDOW, NO_GAIN, USES_CONTEXT
from llama_pe.analysis.pairing import NOISE
from llama_pe.analysis.selection import SELECTION_MARGIN
from llama_pe.analysis.statistics import ALPHA, POWER
from llama_pe.metrics import DEFAULT_PRIMARY, Role, has_role

# ---------------------------------------------------------------------------------------------- comparison.md


TIMING_NOTE = (
    "Not a speed comparison: runs shared a machine (queue workers, other work), so a timing describes its run's "
    "machine, not its encoding; `llama-pe bench` compares speed. Mean ± std over seeds, no verdict.\n"
)


def comparison_markdown(
    trained: pd.DataFrame,
    summary: pd.DataFrame,
    diffs: pd.DataFrame,
    keys: list[str],
    baseline: dict[str, Any],
    primary: tuple[str, ...] = DEFAULT_PRIMARY,
    context: pd.DataFrame | None = None,
    selection: pd.DataFrame | None = None,
) -> str:
    """The report's reading: the runs' setting, the headline (the primary endpoints), perplexity by context, the
    local-window reference, the paired verdicts, the rest."""
    groups = list(dict.fromkeys(summary["group"]))  # the experiments' order, not the alphabet's
    metrics = list(dict.fromkeys(summary["metric"]))
    cells = summary.assign(cell=summary.apply(_summary_cell, axis=1))
    cells = cells.pivot(index="group", columns="metric", values="cell").reindex(index=groups, columns=metrics)
    compared = [m for m in metrics if not has_role(m, Role.TIMING)]
    headline = [m for m in primary if m in compared]
    by_context = [m for m in compared if CONTEXT_METRIC.match(m)]
    parts = [
        "# Position encodings compared\n",
        *setting_lines(trained),
        f"\nGroups by {', '.join(f'`{k}`' for k in keys) or 'nothing'}; each cell is mean ± std over seeds (n runs), "
        "or n/a with the reason no run has a value.\n",
    ]
    if selection is not None and not selection.empty:
        parts += _selection(selection)
    parts += [
        "## Headline\n",
        primary_line(primary, headline),
        *_recorded(cells[headline]),
    ]
    if by_context:
        parts += [
            "\n## Test perplexity by evaluation context (multiples of train.context)\n",
            markdown_table(cells[by_context].reset_index()),
        ]
    if context is not None and not context.empty:
        parts += _context_use(context)
    if not diffs.empty:
        diffs = diffs.assign(difference=diffs.apply(_difference, axis=1), judgement=diffs.apply(_judgement, axis=1))
        parts += _verdicts(diffs, [g for g in groups if g in set(diffs["group"])], headline, baseline)
    parts += ["\n## Every metric\n", *_recorded(cells[compared])]
    if timings := [m for m in metrics if has_role(m, Role.TIMING)]:
        parts += ["\n## Timings\n", TIMING_NOTE, *_recorded(cells[timings])]
    if not diffs.empty:
        table = diffs.assign(p=diffs["p_value"].map(_p), p_holm=diffs["p_holm"].map(_p))
        table = table.rename(columns={"family_size": "family"})
        columns = ["group", "metric", "n_pairs", "difference", "p", "p_holm", "family", "judgement"]
        parts += [
            "\n## Every paired difference\n",
            "p: the paired t-test's; p_holm: adjusted by Holm's method within the metric's family of `family` "
            "tests (every group against the baseline on that metric).\n",
            markdown_table(table[columns].rename(columns={"judgement": "verdict"})),
        ]
    return "\n".join(parts) + "\n"


def primary_line(primary: tuple[str, ...], shown: list[str]) -> str:
    """Which metrics are the primary endpoints (--primary), and those that no run recorded."""
    line = f"Primary endpoints (`--primary`): {', '.join(f'`{m}`' for m in primary)}."
    if unrecorded := [m for m in primary if m not in shown]:
        line += f" No run recorded {', '.join(f'`{m}`' for m in unrecorded)}: not shown."
    return line + "\n"


VERDICTS_NOTE = (
    "Mean difference (group − baseline) over the seeds both ran, with its Student's t 95% interval. The verdict is a "
    "two-sided paired t-test corrected for many comparisons: the family is every group against the baseline on "
    f"one metric, Holm's method adjusts its p-values, and *better* or *worse* needs an adjusted p below {ALPHA:g} "
    "(an interval can exclude 0 while the verdict stays *not distinguishable*: the interval is not corrected). "
    f"Next to *not distinguishable*: the smallest paired difference that had {POWER:.0%} power to be detected, from "
    f"n pairs and the observed std of the differences (noncentral t, α = {ALPHA:g} before the correction, so a "
    "lower bound: the corrected test needs a larger one).\n"
)


def _selection(selection: pd.DataFrame) -> list[str]:
    key = selection["key"].iloc[0]
    metric = next(c for c in selection.columns if c.startswith("mean_"))
    table = selection[["group", "chosen", metric, "n", "decided_by", "candidates"]].rename(columns={"chosen": key})
    return [
        f"## {key} selected by validation loss\n",
        f"Each group is reported at the value of `{key}` with the lowest `{metric[5:]}` (the validation split) on "
        f"its first seed, the sweep's; where the best two are within {SELECTION_MARGIN:g} nats, the mean over the "
        "first two seeds decides between them (`decided_by`). Later seeds never move the choice, and no test or "
        "extrapolation metric takes part in it. `candidates`: each value's loss on the first seed, then on the "
        "second where it ran.\n",
        markdown_table(table) + "\n",
    ]


def _verdicts(diffs: pd.DataFrame, groups: list[str], headline: list[str], baseline: dict[str, Any]) -> list[str]:
    wanted = ", ".join(f"{k}={v}" for k, v in baseline.items())
    verdicts = diffs.assign(cell=diffs.apply(_headline_cell, axis=1))
    verdicts = verdicts.pivot(index="group", columns="metric", values="cell").reindex(index=groups, columns=headline)
    return [f"\n## Against {wanted}, paired by seed\n", VERDICTS_NOTE, *_recorded(verdicts)]


def _recorded(cells: pd.DataFrame) -> list[str]:
    """The table of the groups with a value in at least one column, and a line naming what the rest lack: a RoPE-scaled
    evaluation has perplexity by context only, and a row of n/a in every other table says nothing."""
    unrecorded = cells.apply(lambda row: all(not isinstance(c, str) or c.startswith("n/a") for c in row), axis=1)
    lines = [markdown_table(cells[~unrecorded].reset_index())]
    if unrecorded.any():
        reasons = {c.removeprefix("n/a: ") for c in cells[unrecorded].to_numpy().ravel() if isinstance(c, str)}
        why = f" ({'; '.join(sorted(reasons))})" if reasons else ""
        lines.append(f"\nNot shown: {int(unrecorded.sum())} groups with none of these metrics{why}.")
    return lines


CONTEXT_NOTE = (
    "Each group's perplexity at the longest evaluation context against its own local-window perplexity "
    f"(`{LOCAL_WINDOW}`: every token scored with at most L = train.context tokens before it), run by run: a model "
    "that never looked past L tokens would match its local-window figure. *Uses context beyond L* only where the "
    "whole 95% interval of the difference is below 0 (one interval per group, not corrected across groups). The "
    "first L/2 tokens of each long window see less context than any token of the local window does, so a model that "
    "ignores the far context comes out slightly *worse* here; "
    "`context_gain_at_Kx` compares the same targets with and without the far context and has no such offset.\n"
)


def _context_use(context: pd.DataFrame) -> list[str]:
    longest = context["longest"].iloc[0]
    cells = context.assign(difference=context.apply(_difference, axis=1))
    cells[longest] = context["ppl_longest"].map(_number)
    cells[LOCAL_WINDOW] = context["ppl_local_window"].map(_number)
    table = cells[["group", longest, LOCAL_WINDOW, "difference", "verdict"]]
    return [
        "\n## Context beyond the training length\n",
        CONTEXT_NOTE,
        markdown_table(table.rename(columns={"difference": "difference [95% CI]"})),
    ]


def _headline_cell(row: pd.Series) -> str:
    """The difference, its Holm-adjusted p and the judgement: `-0.15 [-0.27, -0.03] (Holm p = 0.036) better`."""
    holm = "" if math.isnan(row["p_holm"]) else f"(Holm p = {_p(row['p_holm'])})"
    return " ".join(part for part in (row["difference"], holm, row["judgement"]) if part)


def _judgement(row: pd.Series) -> str:
    """The verdict; next to seed noise the smallest difference the study could have detected; and for a repeat of
    another group's differences, which group's test it is."""
    untrained = row["verdict"].endswith(UNTRAINED)
    judgement = row["verdict"].removesuffix(UNTRAINED)
    if judgement == NOISE and not math.isnan(row["min_detectable_diff"]):
        judgement += f" ({POWER:.0%} power only beyond ±{row['min_detectable_diff']:.3g})"
    if isinstance(row["same_as"], str):
        judgement += f" (the differences of {row['same_as']}: one test)"
    return judgement + (UNTRAINED if untrained else "")


def _p(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.2g}"


def _number(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.4g}"


def _summary_cell(row: pd.Series) -> str:
    if row["n"] == 0:
        return f"n/a: {row['reason']}"
    std = "" if math.isnan(row["std"]) else f" ± {row['std']:.4g}"
    return f"{row['mean']:.4g}{std} (n={row['n']})"


def _difference(row: pd.Series) -> str:
    """The mean paired difference and its interval; empty when no seed pairs (the verdict says why)."""
    if math.isnan(row["mean_diff"]):
        return ""
    interval = "" if math.isnan(row["ci95_low"]) else f" [{row['ci95_low']:+.4g}, {row['ci95_high']:+.4g}]"
    return f"{row['mean_diff']:+.4g}{interval}"


def setting_lines(trained: pd.DataFrame) -> list[str]:
    """What the runs were: size, budget, seeds, code; a verdict read without its setting misleads."""
    keys = group_keys(trained)
    sizes = pd.Series([len(group) for _, group in iter_groups(trained, keys)])
    n = f"{sizes.min()}" if sizes.nunique() == 1 else f"{sizes.min()} to {sizes.max()}"
    seeds = ", ".join(str(seed) for seed in sorted(trained[SEED].unique())) if SEED in trained else "not recorded"
    budget = [
        f"{name}={value}"
        for name in ("train.max_steps", "train.max_tokens", "train.context")
        if (value := describe_values(trained, name)) is not None
    ]
    done = [
        f"{value} {unit}"
        for name, unit in (("trained_steps", "steps"), ("trained_tokens", "tokens"))
        if (value := describe_values(trained, name)) is not None
    ]
    lines = [
        f"- **Runs:** {len(trained)}, in {len(sizes)} group{'s' if len(sizes) != 1 else ''} of n = {n} "
        f"({SEED} {seeds})",
        f"- **Model:** model.size={describe_values(trained, 'model.size') or 'not recorded'}, "
        f"{describe_values(trained, 'params') or 'an unrecorded number of'} parameters",
        f"- **Budget:** {', '.join(budget) or 'not recorded'}; "
        + (f"trained {' and '.join(done)} per run" if done else "steps and tokens trained not recorded"),
        f"- **Code:** {describe_values(trained, CODE) or 'not recorded'} (the hash of the stages' source files; "
        "runs.csv names each run's revision)",
    ]
    if (machines := describe_values(trained, "cpu")) is not None:  # runs read from a ledger record their machine
        lines.append(f"- **Machines:** {machines}; devices: {describe_values(trained, 'device')}")
    if sizes.min() < 2:
        lines.append("- **n = 1:** a group with one run has no interval, and no verdict against the baseline")
    if warning := untrained_warning(trained):
        lines.append(f"- **Warning:** {warning}")
    return lines


UNTRAINED = " (untrained)"  # after a verdict that involves a run that does not beat a unigram model
# The verdicts that read as findings (a paired test's, a local-window comparison's), which UNTRAINED marks.
FINDINGS = ("better", "worse", NOISE, USES_CONTEXT, NO_GAIN, HURT)


def untrained_runs(trained: pd.DataFrame) -> pd.Series:
    """A mask of the runs that do not beat a unigram model on validation (best_val_bpc ≥ unigram_val_bpc)."""
    if not {"best_val_bpc", "unigram_val_bpc"} <= set(trained.columns):
        return pd.Series(False, index=trained.index)
    return trained["best_val_bpc"] >= trained["unigram_val_bpc"]  # a null on either side compares False


def untrained_warning(trained: pd.DataFrame) -> str | None:
    """A warning when runs do not beat a unigram model on validation: a verdict between them is one between
    untrained models."""
    untrained = int(untrained_runs(trained).sum())
    if not untrained:
        return None
    both = int(trained[["best_val_bpc", "unigram_val_bpc"]].notna().all(axis=1).sum())
    return (
        f"{untrained} of {both} runs do not beat a unigram model (best_val_bpc ≥ unigram_val_bpc): these "
        f"models are barely trained, and their verdicts, marked{UNTRAINED}, describe untrained models, not the "
        "encodings"
    )


def mark_untrained(
    verdicts: pd.DataFrame,
    frame: pd.DataFrame,
    keys: list[str],
    untrained: set[str],
    baseline: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """The verdicts with UNTRAINED after each finding of a group that has an untrained run (by name), or of every
    group when the baseline has one: a test between barely trained models says nothing of the encodings, however
    small its family."""
    if verdicts.empty or not untrained:
        return verdicts
    flagged = {label for label, group in iter_groups(frame, keys) if group["name"].isin(untrained).any()}
    if baseline is not None and frame.loc[matching(frame, baseline), "name"].isin(untrained).any():
        flagged = set(verdicts["group"])
    marked = verdicts["group"].isin(flagged) & verdicts["verdict"].isin(FINDINGS)
    return verdicts.assign(verdict=verdicts["verdict"].mask(marked, verdicts["verdict"] + UNTRAINED))


def describe_values(frame: pd.DataFrame, column: str) -> str | None:
    """A column's values over the runs: `400`, `400 (25 runs), 312 (2 runs)`, `300 to 400`; None when none has one."""
    values = frame[column].dropna() if column in frame else pd.Series(dtype=object)
    if values.empty:
        return None
    counts = values.map(_plain).value_counts()
    if len(counts) == 1:
        return str(counts.index[0])
    if len(counts) > 3 and pd.api.types.is_numeric_dtype(values):
        return f"{_plain(values.min())} to {_plain(values.max())}"
    return ", ".join(f"{value} ({count} run{'s' if count != 1 else ''})" for value, count in counts.items())


def _plain(value: Any) -> str:
    """A number as a reader writes it: 819,200 and 400, not 819200.0."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub table of the frame's cells as text (pandas' to_markdown needs the tabulate package)."""
    header = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += [
        "| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |" for row in frame.itertuples(index=False)
    ]
    return "\n".join(lines)
