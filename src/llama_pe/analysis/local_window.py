"""Whether a model uses the context beyond its training length: each group's perplexity at the longest context
set against its own local-window perplexity, run by run (a perplexity at 8× alone cannot tell a model
that uses the longer context from one that never looks past train.context tokens)."""

from __future__ import annotations

import math

import pandas as pd

from llama_pe.analysis.experiments import CONTEXT_METRIC, context_multiple
from llama_pe.analysis.grouping import iter_groups, null_reason
from llama_pe.analysis.pairing import ONE_PAIR
from llama_pe.analysis.statistics import t_interval

# Each token scored with the train.context tokens before it at most: what the model does with a local window alone.
LOCAL_WINDOW = "sliding_ppl_at_1x"
USES_CONTEXT = "uses context beyond L"
NO_GAIN = "no gain from context beyond L"
HURT = "worse with the longer context"


def longest_context(frame: pd.DataFrame) -> str | None:
    """The ppl_at_Kx of the largest K above 1 that some run has a value for; None when there is none."""
    longer = []
    for column in frame.columns:
        match = CONTEXT_METRIC.match(column)
        if match and not match["mode"] and context_multiple(column) > 1 and frame[column].notna().any():
            longer.append((context_multiple(column), column))
    return max(longer)[1] if longer else None


def local_window_verdicts(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Every group against its own local window: the perplexity at the longest context minus LOCAL_WINDOW, run by
    run, with its 95% interval. "Uses context beyond L" only where the whole interval is below 0: a model that
    never looks past L tokens would match its local-window figure. Empty when the runs lack either metric."""
    longest = longest_context(frame)
    if longest is None or LOCAL_WINDOW not in frame:
        return pd.DataFrame()
    rows = []
    for label, group in iter_groups(frame, keys):
        both = group[[longest, LOCAL_WINDOW]].dropna().astype(float)  # the runs that have both figures
        mean, _, half = t_interval((both[longest] - both[LOCAL_WINDOW]).to_numpy())
        missing = longest if group[longest].isna().all() else LOCAL_WINDOW
        rows.append(
            {
                "group": label,
                "longest": longest,
                "n": len(both),
                "ppl_longest": both[longest].mean(),
                "ppl_local_window": both[LOCAL_WINDOW].mean(),
                "mean_diff": mean,
                "ci95_low": mean - half,
                "ci95_high": mean + half,
                "verdict": f"n/a: {null_reason(group, missing)}" if both.empty else context_verdict(mean, half),
            }
        )
    return pd.DataFrame(rows)


def context_verdict(mean_diff: float, half_width: float) -> str:
    if math.isnan(half_width):
        return ONE_PAIR
    if mean_diff + half_width < 0:
        return USES_CONTEXT
    return HURT if mean_diff - half_width > 0 else NO_GAIN
