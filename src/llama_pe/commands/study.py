"""`llama-pe study`: a grid of experiments run on DVC's own queue, waited for, kept in the ledger, then reported.

A grid point is a set of `-S KEY=VALUE` overrides: the encodings × seeds × every `--sweep` value. DVC does the
work: `dvc exp run --queue` queues a point, `dvc queue start` runs the queue, `dvc exp show --json` tells each
experiment's state and `dvc queue logs` why one failed. This module only decides what to queue, waits,
and writes each finished experiment into the ledger (llama_pe.analysis.ledger) as soon as it sees it finished.

A point is not queued again when the ledger holds it (the same params and code version, from any machine), or when
an experiment for it already exists (finished, queued or running): one whose params.yaml is what the overrides make
of the workspace's and whose code version (llama_pe.tracking.code_version) is what the workspace runs for it. An
experiment made by other code is not the same experiment, even with the same params.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_pe.analysis.ledger import Ledger, experiment_row
from llama_pe.commands.study_grid import Point, check_baseline_in_grid, parse_grid
from llama_pe.settings.config import flat_params
from llama_pe.tracking.dvc_queue import (
    STATES,
    Experiments,
    StudyError,
    branch_kept,
    failure_log,
    queue_point,
    start_workers,
)

log = logging.getLogger(__name__)

# A grid point that DVC shows nowhere while nothing is queued or running is taken for gone only after this long:
# between its queueing and its worker's start a task can be in no state DVC shows (seen in CI under load, DVC 3.67).
GONE_AFTER_S = 60.0


@dataclass
class StudyResult:
    finished: dict[Point, dict[str, Any]]  # each point's ledger row
    failed: dict[Point, dict[str, Any] | None]  # each point's failed experiment; None: it left the queue unrun
    queued: list[str]


def grid_status(
    experiments: Experiments, ledger: Ledger, points: list[Point]
) -> dict[Point, tuple[str, dict[str, Any] | None]]:
    """Each point's state: done when the ledger holds it (its row, with "ledger": True), else its most advanced
    experiment's (as `dvc exp show --json` gives it), else ("missing", None)."""
    status: dict[Point, tuple[str, dict[str, Any] | None]] = {}
    for point in points:
        row = ledger.holds(flat_params(point.params), experiments.code_of(point))
        if row is not None:
            status[point] = ("done", {"Experiment": row["experiment"], "rev": row["rev"], "ledger": True})
    rest = [point for point in points if point not in status]
    return {**status, **(experiments.status(rest) if rest else {})}


def record_finished(
    repo: Path, ledger: Ledger, status: dict[Point, tuple[str, dict[str, Any] | None]]
) -> dict[Point, tuple[str, dict[str, Any] | None]]:
    """Write every finished experiment that the ledger lacks into it; the status with those points now its rows'."""
    new = {
        point: record
        for point, (state, record) in status.items()
        if state == "done" and record is not None and not record.get("ledger")
    }
    rows = {
        point: experiment_row(repo, record["rev"], record["Experiment"])
        for point, record in new.items()
        if not ledger.holds_rev(record["rev"])
    }
    if rows:
        ledger.append(list(rows.values()))
        log.info("%s: %d finished experiment%s written", ledger.path, len(rows), "s" if len(rows) != 1 else "")
    return {
        **status,
        **{point: ("done", {**record, "rev": ledger_rev(ledger, record["rev"])}) for point, record in new.items()},
    }


def ledger_rev(ledger: Ledger, rev: str) -> str:
    """The full revision the ledger records for an abbreviated one."""
    return next((str(row["rev"]) for row in ledger.rows if str(row["rev"]).startswith(rev)), rev)


def run_study(
    repo: Path,
    points: list[Point],
    jobs: int = 1,
    poll_seconds: float = 15.0,
    dry_run: bool = False,
    on_progress: Callable[[dict[str, int]], None] | None = None,
    before_queueing: Callable[[], None] | None = None,
    *,
    ledger: Ledger,
) -> StudyResult:
    """Queue the points that neither the ledger nor an experiment holds, start DVC's queue and wait until none is
    queued or running, writing each experiment into the ledger when it has finished.

    before_queueing: called when there is something to queue, before anything is (a check that may refuse).
    ledger: where finished experiments are kept.
    """
    experiments = Experiments(repo)
    status = grid_status(experiments, ledger, points)
    if not dry_run:  # finished before (an interrupted study): kept now, before anything can stop this one
        status = record_finished(repo, ledger, status)
    to_queue = [p for p in points if status[p][0] in ("missing", "failed")]
    log.info(
        "%d grid points: %d already have an experiment, %d to queue%s",
        len(points),
        len(points) - len(to_queue),
        len(to_queue),
        " (dry run: nothing queued)" if dry_run else "",
    )
    for point in points:
        state, record = status[point]
        where = f" ({record['Experiment']}{', in the ledger' if record.get('ledger') else ''})" if record else ""
        log.info("  %-28s %s%s", point.label, state, where)
    if to_queue and before_queueing is not None:
        before_queueing()
    if dry_run:
        return StudyResult({}, {}, [])
    with branch_kept(repo):
        queued = [queue_point(repo, point) for point in to_queue]
    idle_polls = 0
    unseen_since: float | None = None  # since when a point is shown nowhere while nothing is pending
    while True:
        status = record_finished(repo, ledger, grid_status(experiments, ledger, points))
        counts = {state: sum(s == state for s, _ in status.values()) for state in (*STATES, "missing")}
        if on_progress:
            on_progress(counts)
        if counts["running"] + counts["queued"] == 0:
            unseen_since = unseen_since or time.monotonic()
            if counts["missing"] == 0 or time.monotonic() - unseen_since >= GONE_AFTER_S:
                break
        else:
            unseen_since = None
        # DVC starts only the workers that are missing, so asking again is safe; it revives a queue whose worker
        # stopped (a worker started before the grid was queued may have found it empty and quit).
        idle_polls = idle_polls + 1 if counts["running"] == 0 else 0
        if idle_polls % 8 == 1:
            start_workers(repo, jobs)
        time.sleep(poll_seconds)
    rows_by_rev = {str(row["rev"]): row for row in ledger.rows}
    finished = {p: rows_by_rev[r["rev"]] for p, (s, r) in status.items() if s == "done"}
    failed = {p: r for p, (s, r) in status.items() if s in ("failed", "missing")}
    return StudyResult(finished, failed, queued)


LEDGER_NAME = "ledger.csv"  # a study's own ledger, in its --out folder unless --ledger names another file


def refuse_tracked_ledger(repo: Path, path: Path, dry_run: bool) -> None:
    """Refuse a default ledger (path, as the user gave --out) that git tracks: its rows are a committed study's
    record, changed only when asked."""
    from llama_pe.analysis.report_writer import committed

    if not committed((repo / path).parent, [path.name]):
        return
    message = (
        f"--out {path.parent}: its {path.name} is a committed study's record (git tracks it), and a study writes "
        f"its runs into its --out folder's {path.name}; give --out a new folder for a study of its own, or "
        f"--ledger {path} to add these runs to that record"
    )
    if not dry_run:
        raise StudyError(message)
    log.warning("%s (dry run: nothing queued, nothing written)", message)


def study(
    repo: Path,
    pos: str,
    seeds: str,
    hf: bool,
    sets: list[str],
    jobs: int,
    out_dir: Path,
    baseline: list[str],
    poll_seconds: float = 15.0,
    dry_run: bool = False,
    force: bool = False,
    sweeps: Iterable[str] = (),
    select_key: str | None = None,
    *,
    ledger_path: Path | None = None,
    primary: list[str] | None = None,
) -> None:
    """`llama-pe study`: check the grid and the ledger, run what is missing through DVC's queue, keep each result in
    the ledger, report the whole grid from it.

    A report of new runs changes a committed report in out_dir: without `force` that is refused before anything is
    queued, not after the training; with nothing to queue, the report is written if it changes no committed file.
    select_key: report each group at the best value of these swept keys (comma-separated) by validation loss
        (llama_pe.analysis.selection.select_by_validation).
    primary: the report's headline metrics, as for `llama-pe report --primary`, checked before anything is queued.
    ledger_path: where finished runs are kept; by default out_dir's own ledger (LEDGER_NAME). A file git tracks is
        written only when named here: a trial study must not add rows to a committed study's record.
    """
    from tqdm import tqdm

    from llama_pe.analysis.experiments import ReportError
    from llama_pe.analysis.pairing import baseline_conditions, primary_endpoints, read_val_curves
    from llama_pe.analysis.report_writer import refuse_committed_folder, write_report
    from llama_pe.analysis.selection import select_by_validation

    if jobs < 1:
        raise StudyError(f"--jobs: expected a number of queue workers >= 1, got {jobs}")
    endpoints = primary_endpoints(primary)  # a report setting, checked before the grid is even read
    points = parse_grid(pos, seeds, hf, sets, repo / "params.yaml", sweeps)
    swept = [item.partition("=")[0] for item in sweeps]
    unswept = [key for key in (select_key.split(",") if select_key else []) if key not in swept]
    if unswept:
        raise StudyError(
            f"--select {unswept[0]}: not swept by this grid; select one or more of the --sweep keys "
            f"({', '.join(swept) or 'none given: add --sweep KEY=V1,V2'})"
        )
    check_baseline_in_grid(points, baseline)
    named = {condition.partition("=")[0] for condition in baseline}
    unnamed = [key for key in swept if key not in (select_key or "").split(",") and key not in named]
    if unnamed:  # else the report, hours later, finds the baseline in one group per swept value and stops
        raise StudyError(
            f"--sweep {unnamed[0]}: the report would hold a group per value, and the baseline "
            f"({', '.join(baseline) or 'native rope'}) one of each; add --select {','.join(unnamed)} to report each "
            f"encoding at its best value, or --baseline {unnamed[0]}=VALUE"
        )
    if ledger_path is None:
        ledger_path = out_dir / LEDGER_NAME
        refuse_tracked_ledger(repo, ledger_path, dry_run)
    ledger = Ledger.read(repo / ledger_path)  # a damaged one stops the study here, before any work

    def check_out_dir() -> None:
        try:
            refuse_committed_folder(out_dir)
        except ReportError as err:
            if not dry_run:
                raise
            log.warning("%s (dry run: nothing queued, nothing written)", err)

    with tqdm(total=len(points), unit="exp", desc="study", disable=dry_run) as bar:

        def progress(counts: dict[str, int]) -> None:
            bar.n = counts["done"]
            bar.set_postfix(running=counts["running"], queued=counts["queued"], failed=counts["failed"])

        result = run_study(
            repo, points, jobs, poll_seconds, dry_run, progress, None if force else check_out_dir, ledger=ledger
        )
    if dry_run:
        return
    for point, record in result.failed.items():
        if record is None:
            log.error("%s: its experiment left the queue without running (removed?)", point.label)
        else:
            log.error(
                "%s: experiment %s failed; the end of its log:\n%s",
                point.label,
                record["Experiment"],
                failure_log(repo, record["Experiment"]),
            )
    if result.finished:
        frame = ledger.frame(list(result.finished.values()))  # in grid order
        frame, selection = select_by_validation(frame, select_key.split(",")) if select_key else (frame, None)
        curves = read_val_curves(repo, frame)  # of the experiments this repository has (a ledger's may be elsewhere)
        conditions = baseline_conditions(frame, baseline)
        write_report(frame, out_dir, conditions, None if curves.empty else curves, force, endpoints, selection)
    if result.failed:
        names = ", ".join(point.label for point in result.failed)
        raise StudyError(
            f"{len(result.failed)} of {len(points)} experiments failed ({names})"
            f"{'; the report holds the others' if result.finished else ''}. Fix the cause and run the same command "
            "again: finished experiments are not trained again"
        )
