"""The report's files: runs.csv, summary.csv, paired_differences.csv, comparison.md and the figures, drafted aside
and moved into place; a committed report is changed only when asked. Written for `llama-pe report` and for
`llama-pe study` alike."""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from llama_pe.analysis.comparison import comparison_markdown, mark_untrained, untrained_runs, untrained_warning
from llama_pe.analysis.experiments import (
    SCALING,
    ReportError,
    with_rope_scaling_rows,
)
from llama_pe.analysis.grouping import check_one_run_per_seed, group_keys, iter_groups, summarize
from llama_pe.analysis.local_window import local_window_verdicts
from llama_pe.analysis.pairing import paired_differences
from llama_pe.analysis.verdict_table import verdict_markdown
from llama_pe.io import atomic_path, write_text
from llama_pe.metrics import DEFAULT_PRIMARY

log = logging.getLogger(__name__)


def write_report(
    frame: pd.DataFrame,
    out_dir: Path,
    baseline: dict[str, Any],
    curves: pd.DataFrame | None = None,
    force: bool = False,
    primary: tuple[str, ...] = DEFAULT_PRIMARY,
    selection: pd.DataFrame | None = None,
) -> dict[str, Path]:
    """The tables (runs.csv, summary.csv, paired_differences.csv, comparison.md) and, given the curves, the figures;
    returns their paths. The headline of comparison.md shows the primary endpoints (checked by primary_endpoints).
    selection: the value each group was reported at (experiments.select_by_validation), as selection.csv and a
    table of comparison.md.

    Everything is drafted aside first: a committed file (one that git tracks) is changed only with `force`, so a
    narrower report never silently replaces a study's record.
    """
    if frame.empty:
        raise ReportError(
            "no finished experiments selected: run some (dvc exp run, llama-pe study) or widen the selection "
            "(--all-commits for the experiments of every commit, fewer --only)"
        )
    with tempfile.TemporaryDirectory(prefix="llama-pe-report.") as tmp:
        drafts, described = draft_report(frame, Path(tmp), baseline, curves, primary, selection)
        if not force:
            refuse_overwrite(out_dir, drafts)
        paths = {name: out_dir / name for name in drafts}
        for name, draft in drafts.items():
            with atomic_path(paths[name]) as final:
                shutil.copyfile(draft, final)
    log.info("%s: wrote %s", described, ", ".join(map(str, paths.values())))
    return paths


def draft_report(
    frame: pd.DataFrame,
    out_dir: Path,
    baseline: dict[str, Any],
    curves: pd.DataFrame | None,
    primary: tuple[str, ...] = DEFAULT_PRIMARY,
    selection: pd.DataFrame | None = None,
) -> tuple[dict[str, Path], str]:
    """write_report's files, written into out_dir by name; and a line that says what they hold."""
    from llama_pe.analysis import report_figures  # matplotlib is slow to import

    trained, frame = frame, with_rope_scaling_rows(frame)
    if SCALING in frame and SCALING not in baseline:
        baseline = {**baseline, SCALING: "none"}  # the baseline as trained, not one of its scaled evaluations
    keys = group_keys(frame)
    check_one_run_per_seed(frame, keys)
    summary = summarize(frame, keys)
    diffs = paired_differences(frame, keys, baseline) if keys else pd.DataFrame()
    untrained = set(trained.loc[untrained_runs(trained), "name"])
    diffs = mark_untrained(diffs, frame, keys, untrained, baseline)
    paths = {name: out_dir / name for name in ("runs.csv", "summary.csv", "comparison.md")}
    tables = {"runs.csv": trained, "summary.csv": summary}  # runs.csv: one row per experiment, scaled metrics included
    if not diffs.empty:
        paths["paired_differences.csv"] = out_dir / "paired_differences.csv"
        tables["paired_differences.csv"] = diffs
    if curves is not None:
        paths["val_curves.csv"] = out_dir / "val_curves.csv"
        tables["val_curves.csv"] = curves
    if selection is not None:
        paths["selection.csv"] = out_dir / "selection.csv"
        tables["selection.csv"] = selection
    for name, table in tables.items():
        with atomic_path(paths[name]) as tmp:
            table.to_csv(tmp, index=False)
    if warning := untrained_warning(trained):
        log.warning(warning)
    context = mark_untrained(local_window_verdicts(frame, keys), frame, keys, untrained)
    markdown = comparison_markdown(trained, summary, diffs, keys, baseline, primary, context, selection)
    write_text(paths["comparison.md"], markdown)
    if not diffs.empty:
        paths["verdicts.md"] = out_dir / "verdicts.md"
        write_text(paths["verdicts.md"], verdict_markdown(frame, keys, diffs, baseline))
    paths["extrapolation.png"] = report_figures.extrapolation(frame, keys, out_dir / "extrapolation.png")
    paths["bpc.png"] = report_figures.bits_per_character(trained, group_keys(trained), out_dir / "bpc.png")
    if report_figures.has_context_use(trained):
        paths["context_use.png"] = report_figures.context_use(trained, group_keys(trained), out_dir / "context_use.png")
    if curves is not None:
        # The curves of training: a scaled evaluation trained nothing of its own.
        paths["val_curves.png"] = report_figures.val_curves(
            trained, group_keys(trained), curves, out_dir / "val_curves.png"
        )
    runs = f"{len(trained)} experiment" + ("s" if len(trained) != 1 else "")
    trained_groups = sum(1 for _ in iter_groups(trained, group_keys(trained)))
    views = summary["group"].nunique() - trained_groups  # a RoPE-scaled evaluation: a group of the report, no run
    scaled = f" and {views} RoPE-scaled evaluations of them" if views > 0 else ""
    return paths, f"{runs} in {trained_groups} groups{scaled}, by {', '.join(keys) or 'nothing'}"


# ---------------------------------------------------------------------------------------------- committed files


# Every file a report can write into its folder (val_curves.*: when the experiments' curves are read).
REPORT_FILES = (
    "runs.csv",
    "summary.csv",
    "paired_differences.csv",
    "comparison.md",
    "verdicts.md",
    "val_curves.csv",
    "extrapolation.png",
    "bpc.png",
    "context_use.png",
    "val_curves.png",
    "selection.csv",
)


def refuse_overwrite(out_dir: Path, drafts: dict[str, Path]) -> None:
    """Refuse to change a file under out_dir that git tracks: bytes equal to the draft's may stay as they are."""
    changed = [name for name in committed(out_dir, drafts) if not _same_bytes(out_dir / name, drafts[name])]
    if changed:
        raise ReportError(overwrite_message(out_dir, changed))


def refuse_committed_folder(out_dir: Path) -> None:
    """Refuse a folder that holds a committed report (before a study trains runs that would change it)."""
    if names := committed(out_dir, REPORT_FILES):
        raise ReportError(overwrite_message(out_dir, names))


def overwrite_message(out_dir: Path, names: list[str]) -> str:
    files = f"{len(names)} committed file{'s' if len(names) != 1 else ''}"
    return (
        f"--out {out_dir}: the report would change {files} there ({', '.join(names)}); give --out a new folder "
        "to write it elsewhere, or --force to overwrite them"
    )


def committed(out_dir: Path, names: Iterable[str]) -> list[str]:
    """Those of the names whose files under out_dir git tracks; none when out_dir is in no git repository."""
    names = list(names)
    folder = out_dir.absolute()
    existing = next(p for p in (folder, *folder.parents) if p.is_dir())  # git needs a folder to run in
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--", *(str(folder / name) for name in names)],
        cwd=existing,
        capture_output=True,
        text=True,
    )
    if listed.returncode != 0:
        return []  # not in a git repository: nothing is committed
    tracked = {(existing / path).resolve() for path in listed.stdout.split("\0") if path}
    return [name for name in names if (folder / name).resolve() in tracked]


def _same_bytes(path: Path, draft: Path) -> bool:
    return path.is_file() and path.read_bytes() == draft.read_bytes()
