"""Every metric the stages record, in one table: what the report does with it and which way is better.

A metric is a row's pattern (a regular expression its whole name matches; exactly one row matches each name the
train, evaluate and tokenizer stages write: the tests check it); a new metric is a row here, never a branch in the
report. The rows' order is the order of the report's tables.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from llama_pe.positions.rope_scaling import ROPE_SCALING_METHODS


class Role(Enum):
    RESULT = "result"  # aggregated over seeds and compared between groups
    # Timings vary from run to run of the same code and params; everything else repeats exactly on a CPU. Runs that
    # shared a machine (queue workers, other work) time the machine's load, not the encoding: a timing is described
    # (mean ± std), never compared.
    TIMING = "timing"
    SETTING = "setting"  # describes a run's setting, not its result: the report's opening lines, never averaged
    UNREPORTED = "unreported"  # recorded for the run's own record (dvc metrics show); no report reads it


LOWER, HIGHER = "lower", "higher"  # which way is better; None: no verdict (params: a count, not a score)


@dataclass(frozen=True)
class Metric:
    pattern: str
    role: Role
    better: str | None = None
    # The names of this row among the default primary endpoints (llama-pe report --primary): the headline table
    # and its verdicts, the answer at a glance.
    primary: tuple[str, ...] = ()

    def matches(self, name: str) -> bool:
        return re.fullmatch(self.pattern, name) is not None


def metric_suffix(multiple: float) -> str:
    """A multiple of train.context in a metric's name: 0.5 -> 0p5x (a dot would read as nesting in `dvc exp show`)."""
    return f"{multiple:g}".replace(".", "p") + "x"


MULTIPLE = r"\d+(?:p\d+)?"  # ppl_at_0p5x: windows of 0.5 × train.context (metric_suffix)
# A rope run's perplexity by context with its frequencies scaled by a method (eval.rope_scaling): group 1 is the
# unscaled metric, group 2 the method. The report makes it a group of its own per method (experiments.py).
SCALED_PPL = Metric(rf"(ppl_at_{MULTIPLE}x)_({'|'.join(map(re.escape, ROPE_SCALING_METHODS))})", Role.RESULT, LOWER)

METRICS = (
    Metric(r"best_val_loss", Role.RESULT, LOWER, primary=("best_val_loss",)),
    Metric(r"best_val_bpc", Role.RESULT, LOWER),
    Metric(r"(val|test|holdout)_(loss|ppl|bpc)", Role.RESULT, LOWER, primary=("test_ppl",)),
    Metric(rf"ppl_at_{MULTIPLE}x", Role.RESULT, LOWER),
    SCALED_PPL,
    Metric(rf"sliding_ppl_at_{MULTIPLE}x", Role.RESULT, LOWER),
    # How the model uses its context, L = train.context (the evaluate stage; null where a window cannot be scored):
    # the mean test loss over a band of window positions, band_loss_1to2x for positions [L, 2L);
    Metric(rf"band_loss_({MULTIPLE})to({MULTIPLE})x", Role.RESULT, LOWER),
    # the same targets' loss with the whole window minus with the context cut to the last L tokens (< 0: it helps);
    Metric(rf"context_gain_at_{MULTIPLE}x", Role.RESULT, LOWER, primary=("context_gain_at_8x",)),
    # a span's loss after its own copy d = K × L tokens back minus after another span there (< 0: it copies);
    Metric(
        rf"copy_gain_(text|random)_at_{MULTIPLE}x",
        Role.RESULT,
        LOWER,
        primary=("copy_gain_text_at_7x", "copy_gain_random_at_7x"),
    ),
    # per layer, the attention's mean distance and entropy: what the model does, neither better nor worse.
    Metric(rf"attn_(distance|entropy)_l\d+_at_{MULTIPLE}x", Role.RESULT),
    Metric(r"tokens_per_sec", Role.TIMING, HIGHER),
    Metric(r"params", Role.RESULT),
    Metric(r"trained_steps|trained_tokens|unigram_val_bpc", Role.SETTING),
    # The train stage's record of its run: where the best checkpoint was, how it ended, on what, how long.
    Metric(r"best_step|best_tokens|stopped_early|device|precision|accelerator", Role.UNREPORTED),
    Metric(r"cpu|cpu_signature|cpu_isa|cpu_threads", Role.UNREPORTED),  # the machine's identity (llama_pe.core.device)
    Metric(r"wall_time_s|val_time_s", Role.UNREPORTED),  # timings of the whole run: tokens_per_sec speaks for them
    # The tokenizer stage's: the same for every run of the same data and tokenizer params.
    Metric(r"vocab_size|pieces_used|tokens|chars|chars_per_token|unk_tokens|lossless", Role.UNREPORTED),
)
# The primary endpoints when none are given: the first table's columns, in this order.
DEFAULT_PRIMARY = tuple(name for row in METRICS for name in row.primary)


def metric_row(name: str) -> Metric | None:
    """The table's row for a metric name; None for a name that is no metric (a param, a column DVC adds)."""
    rows = [row for row in METRICS if row.matches(name)]
    assert len(rows) <= 1, f"{name} matches {len(rows)} rows of METRICS"  # the table's own invariant
    return rows[0] if rows else None


def has_role(name: str, *roles: Role) -> bool:
    row = metric_row(name)
    return row is not None and row.role in roles


def is_judged(name: str) -> bool:
    """A result with a better direction: one that gets a verdict, and can be a primary endpoint."""
    row = metric_row(name)
    return row is not None and row.role is Role.RESULT and row.better is not None


def judged_patterns() -> list[str]:
    """The judged rows' patterns as a reader writes them (ppl_at_<K>x), for messages; a scaled perplexity is the
    report's group of its own, not a metric to name."""
    readable = []
    for row in METRICS:
        if row.role is Role.RESULT and row.better is not None and row is not SCALED_PPL:
            readable.append(row.pattern.replace(f"({MULTIPLE})", "<K>").replace(MULTIPLE, "<K>"))
    return readable
