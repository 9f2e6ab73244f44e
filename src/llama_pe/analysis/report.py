"""`llama-pe report`: the experiments of a repo (read from DVC) or the runs of a ledger, selected, aggregated and
written as a report.

Reading, grouping and the statistics are analysis.experiments'; the ledger, analysis.ledger's; the files,
analysis.report_writer's.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from llama_pe.analysis.experiments import CODE, ReportError, experiments_frame, read_experiments, select
from llama_pe.analysis.ledger import Ledger
from llama_pe.analysis.pairing import baseline_conditions, primary_endpoints, read_val_curves
from llama_pe.analysis.report_writer import write_report
from llama_pe.analysis.selection import select_by_validation

log = logging.getLogger(__name__)


# A clone has the commits but not the experiments: say where they are, and what stands in for them.
NO_EXPERIMENTS = (
    "no DVC experiments here, only the runs that commits hold: experiments are git refs that `git clone` does not "
    "fetch; `dvc exp pull origin -A --no-cache` brings their params and metrics where origin has them, and without "
    "them the committed reports/ (and a study's ledger, `llama-pe report --ledger reports/ledger.csv`) are the "
    "studies' record"
)


def report(
    repo: str | Path,
    out_dir: str | Path,
    all_commits: bool,
    only: list[str],
    baseline: list[str],
    force: bool = False,
    ledger: str | Path | None = None,
    select_key: str | None = None,
    primary: list[str] | None = None,
    runs: str | Path | None = None,
) -> None:
    """`llama-pe report`: read the experiments (or the ledger), select, aggregate and write the tables and figures;
    primary: the headline's metrics (None: the metrics table's default).

    From a ledger no DVC experiment is read, and so no validation curve either (val_curves.* are left out). runs: a
    report's runs.csv instead (a committed study's record, for studies older than the ledger), read the same way.
    """
    endpoints = primary_endpoints(primary)  # before reading anything
    sources = [
        name for name, given in (("--ledger", ledger), ("--runs", runs), ("--all-commits", all_commits)) if given
    ]
    if len(sources) > 1:
        raise ReportError(f"{' and '.join(sources)}: each names where the runs come from; give one of them")
    if runs is not None:
        frame = runs_frame(Path(runs))
        commits_only = False
    elif ledger is not None:
        frame = Ledger.read(ledger, must_exist=True).frame()
        if frame.empty:
            raise ReportError(f"--ledger {ledger}: it holds no runs yet; `llama-pe study` writes them")
        commits_only = False
    else:
        frame = read_experiments(repo, all_commits)
        commits_only = not frame.empty and (frame["name"] == frame["rev"]).all()  # an experiment's name is not its rev
        if commits_only:
            log.warning(NO_EXPERIMENTS)
    frame = select(frame, only)
    if frame.empty and commits_only:
        raise ReportError(f"--only {', '.join(only)}: no run matches; {NO_EXPERIMENTS}")
    selection = None
    if select_key is not None and not frame.empty:
        frame, selection = select_by_validation(frame, select_key.split(","))
    wanted = baseline_conditions(frame, baseline)
    curves = None if ledger is not None or runs is not None else read_val_curves(repo, frame)
    write_report(frame, Path(out_dir), wanted, curves, force, endpoints, selection)


def runs_frame(path: Path) -> pd.DataFrame:
    """The runs of a report's runs.csv, one experiment a row, as read_experiments gives them (its code hash kept)."""
    try:
        table = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ReportError(f"--runs {path}: cannot read it as a report's runs.csv ({err})") from None
    if table.empty or "name" not in table:
        raise ReportError(f"--runs {path}: not a report's runs.csv (no runs, or no name column)")
    frame = experiments_frame({**record, "Experiment": record["name"]} for record in table.to_dict("records"))
    if CODE in table:  # the hash that runs.csv recorded: no dvc.lock here gives it
        frame[CODE] = table.set_index("name").loc[frame["name"], CODE].to_numpy()
    return frame
