"""`llama-pe report`: the experiments of a repo read from DVC, selected, aggregated and written as a report.

Reading, grouping and the statistics are llama_pe.experiments'; the files, llama_pe.report_writer's.
"""

from __future__ import annotations

import logging
from pathlib import Path

from llama_pe.experiments import (
    ReportError,
    baseline_conditions,
    primary_endpoints,
    read_experiments,
    read_val_curves,
    select,
)
from llama_pe.report_writer import write_report

log = logging.getLogger(__name__)


# A clone has the commits but not the experiments: say where they are, and what stands in for them.
NO_EXPERIMENTS = (
    "no DVC experiments here, only the runs that commits hold: experiments are git refs that `git clone` does not "
    "fetch; `dvc exp pull origin -A --no-cache` brings their params and metrics where origin has them, and without "
    "them the committed reports/ are the studies' record"
)


def report(
    repo: str | Path, out_dir: str | Path, all_commits: bool, only: list[str], baseline: list[str], force: bool = False,
    primary: list[str] | None = None,
) -> None:  # fmt: skip
    """`llama-pe report`: read the experiments, select, aggregate and write the tables and figures; primary: the
    headline's metrics (None: the metrics table's default)."""
    endpoints = primary_endpoints(primary)  # before reading anything
    frame = read_experiments(repo, all_commits)
    commits_only = not frame.empty and (frame["name"] == frame["rev"]).all()  # an experiment's name is not its rev
    if commits_only:
        log.warning(NO_EXPERIMENTS)
    frame = select(frame, only)
    if frame.empty and commits_only:
        raise ReportError(f"--only {', '.join(only)}: no run matches; {NO_EXPERIMENTS}")
    wanted = baseline_conditions(frame, baseline)
    write_report(frame, Path(out_dir), wanted, read_val_curves(repo, frame), force, endpoints)
