"""`llama-pe show`: the experiments side by side, in a terminal's width.

`dvc exp show` holds every param and all 66 metrics, so at 120 columns each cell is an ellipsis. This reads the
same records through dvc.api.exp_show (the structured data behind `dvc exp show --json`) and prints the columns
that compare encodings: the experiment, its encoding, seed and learning rate, its headline metrics, and every other
param in which the experiments differ. A name too
long for the terminal is shortened in the middle; columns that still do not fit are left out, and the last line
says which.
"""

from __future__ import annotations

import math
import shutil
import textwrap
from collections.abc import Iterable, Sequence
from typing import Any

from llama_pe.errors import LlamaPeError

DEFAULT_COLUMNS = (
    "model.pos",
    "model.impl",
    "train.seed",
    "train.lr",
    "best_val_loss",
    "test_ppl",
    "ppl_at_8x",
)
NAME = "experiment"
MIN_NAME = 12  # a shortened name still tells experiments apart
GAP = "  "


class ShowError(LlamaPeError, ValueError):
    """A column asked for is neither a param nor a metric of the experiments."""


def show(repo: str = ".", all_commits: bool = False, extra: Sequence[str] = (), width: int | None = None) -> str:
    """The table of the repository's experiments (HEAD's, or every commit's), with `extra` columns after the
    default ones, fitted to `width` columns (the terminal's when None)."""
    from llama_pe.analysis.experiments import exp_show

    records = exp_show(repo, num=-1 if all_commits else 1)
    width = width or shutil.get_terminal_size((120, 24)).columns
    shown = [*DEFAULT_COLUMNS, *varying_params(records, DEFAULT_COLUMNS)]
    return table(records, [*shown, *(c for c in extra if c not in shown)], width)


def varying_params(records: Sequence[dict[str, Any]], shown: Sequence[str]) -> list[str]:
    """The params besides `shown` whose values differ among the experiments (`-S model.size=tiny`), in the order
    DVC gives them: two rows that differ only there would otherwise look the same."""
    from llama_pe.analysis.experiments import PARAM_SECTIONS  # pandas: imported where records are read anyway

    keys = dict.fromkeys(k for r in records for k in r if k.startswith(PARAM_SECTIONS) and "/" not in k)
    return [k for k in keys if k not in shown and len({repr(r.get(k)) for r in records}) > 1]


def table(records: Iterable[dict[str, Any]], columns: list[str], width: int) -> str:
    """Records of dvc.api.exp_show as fixed-width text: one row per experiment, the workspace and each commit's
    run first, as `dvc exp show` orders them."""
    records = list(records)
    known = {key for record in records for key in record}
    unknown = [c for c in columns if c not in known]
    if unknown and records:
        raise ShowError(
            f"--columns {', '.join(unknown)}: not a param or metric of these experiments; any key of "
            f"`dvc exp show --json` is valid, such as {', '.join(sorted(k for k in known if '.' in k)[:6])}, ..."
        )
    states = [record.get("State") for record in records]
    show_state = any(state not in (None, "Success") for state in states)
    header = [NAME, *(["state"] if show_state else []), *columns]
    rows = [
        [_name(record), *([record.get("State") or ""] if show_state else []), *(_cell(record.get(c)) for c in columns)]
        for record in records
    ]
    return _fitted(header, rows, width)


def _name(record: dict[str, Any]) -> str:
    if record.get("rev") == "workspace":
        return "workspace"
    rev = str(record.get("rev") or "")[:7]
    name = record.get("Experiment")
    return f"{name} ({rev})" if name else rev


def _cell(value: Any) -> str:
    if value is None or value in ("", "!", "None"):
        return "-"  # DVC's "!": the experiment has no such metric (a learned table past its length)
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if value.is_integer() and abs(value) < 1e9:
            return str(int(value))  # DVC reads integers back as floats: seed 0.0
        if abs(value) >= 100:
            return f"{value:.2f}"  # perplexities
        return f"{value:.4f}" if abs(value) >= 0.1 else f"{value:.6g}"  # losses; learning rates
    return str(value)


def _fitted(header: list[str], rows: list[list[str]], width: int) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    total = sum(widths) + len(GAP) * (len(widths) - 1)
    if total > width:  # shorten the names first: they are the widest and the least needed in full
        widths[0] = max(MIN_NAME, widths[0] - (total - width))
    left_out: list[str] = []
    while len(widths) > 2 and sum(widths) + len(GAP) * (len(widths) - 1) > width:
        index = _least_needed(header)
        left_out.append(header.pop(index))
        widths.pop(index)
        for row in rows:
            row.pop(index)
    lines = [_line(header, widths), _line(["-" * w for w in widths], widths)]
    lines += [_line(row, widths) for row in rows]
    if left_out:
        note = f"(left out for the width of {width} columns: {', '.join(left_out)}; widen the terminal)"
        lines += textwrap.wrap(note, width)
    return "\n".join(lines)


# Left out first when the terminal is narrow: columns asked for with --columns (the last first), then these.
LEAST_NEEDED = ("model.impl", "train.lr", "ppl_at_8x", "test_ppl", "train.seed", "state")


def _least_needed(header: list[str]) -> int:
    extra = [i for i, column in enumerate(header[1:], 1) if column not in (*DEFAULT_COLUMNS, "state")]
    if extra:
        return extra[-1]
    return next(
        (header.index(c) for c in LEAST_NEEDED if c in header), len(header) - 1
    )  # the encoding and best_val_loss last


def _line(cells: list[str], widths: list[int]) -> str:
    shown = [_shortened(cells[0], widths[0]).ljust(widths[0])]
    shown += [cell.rjust(w) for cell, w in zip(cells[1:], widths[1:], strict=True)]
    return GAP.join(shown).rstrip()


def _shortened(text: str, width: int) -> str:
    """The name cut at its end, its revision kept: `alibi-seed-3-with-a… (0f9e8d7)`."""
    if len(text) <= width:
        return text
    name, _, rev = text.rpartition(" (")
    suffix = f" ({rev}" if name and width > len(rev) + 6 else ""
    return (name if suffix else text)[: width - len(suffix) - 1] + "…" + suffix
