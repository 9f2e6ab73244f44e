"""`llama-pe study`: a grid of experiments run on DVC's own queue, waited for, then reported.

A grid point is a set of `-S KEY=VALUE` overrides. DVC does the work: `dvc exp run --queue` queues a point,
`dvc queue start` runs the queue, `dvc exp show` tells each experiment's state and `dvc queue logs` why one
failed. This module only decides what to queue and waits. A point is not queued again when an experiment for it
already exists (finished, queued or running): one whose params.yaml is what the overrides make of the
workspace's, whose stages run the same commands on the same dependencies and params (dvc.yaml), and whose source
files (every git-tracked dependency of those stages) are the workspace's. An experiment made by other code is not
the same experiment, even with the same params.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llama_pe.config import config_from_dict
from llama_pe.encodings import ENCODINGS, hf_encoding
from llama_pe.errors import LlamaPeError

log = logging.getLogger(__name__)

GRID_KEYS = {"model.pos": "--pos", "model.impl": "--hf", "train.seed": "--seeds"}
# How far each state is from done; a point shows the most advanced of its experiments.
STATES = ("done", "running", "queued", "failed")
# `dvc exp list --all-commits`: "\t28418b9 [aloof-mice]" under each baseline.
FINISHED = re.compile(r"^\s+([0-9a-f]{7,40}) \[([^\]]+)\]$", re.MULTILINE)
# `dvc queue status`: "ab6aa50  valid-slew  02:13 AM   Running".
QUEUE_ENTRY = re.compile(r"^([0-9a-f]{7,40})\s+(\S+)\s.*?\b(Queued|Running|Failed|Success)\s*$", re.MULTILINE)


class StudyError(LlamaPeError, ValueError):
    """The grid cannot be run as asked, or some of its experiments failed."""


@dataclass(frozen=True)
class Point:
    """One experiment of the grid: its overrides and the params.yaml they make."""

    label: str
    overrides: tuple[str, ...]
    params: dict[str, Any] = field(compare=False, hash=False, repr=False)


# ---------------------------------------------------------------------------------------------- the grid


def parse_grid(pos: str, seeds: str, hf: bool, sets: list[str], params_file: Path) -> list[Point]:
    """The grid's points, seed by seed (a grid stopped halfway holds whole seeds), each checked like params.yaml."""
    encodings = _encodings(pos)
    seed_values = _seeds(seeds)
    base = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    common = [_checked_set(item, base) for item in sets]
    points = []
    for seed in seed_values:
        variants = [(f"{name} native", ("model.impl=native", f"model.pos={name}")) for name in encodings]
        if hf:
            variants.append((f"{hf_encoding()} hf", ("model.impl=hf", f"model.pos={hf_encoding()}")))
        for variant, grid_overrides in variants:
            label, overrides = f"{variant} seed {seed}", (*grid_overrides, f"train.seed={seed}", *common)
            points.append(Point(label, overrides, _apply(params_file, overrides, label)))
    return list(dict.fromkeys(points))  # --pos rope,rope: one experiment


def _encodings(pos: str) -> list[str]:
    valid = list(ENCODINGS)
    names = [name.strip() for name in pos.split(",") if name.strip()]
    if not names:
        raise StudyError(f"--pos: expected encodings separated by commas; valid: {', '.join(valid)}")
    for name in names:
        if name not in valid:
            raise StudyError(f"--pos: unknown encoding {name!r}; valid: {', '.join(valid)}")
    return names


def _seeds(seeds: str) -> list[int]:
    try:
        values = [int(seed) for seed in seeds.split(",")]
    except ValueError:
        raise StudyError(f"--seeds: expected integers separated by commas, such as 0,1,2; got {seeds!r}") from None
    return list(dict.fromkeys(values))


def _checked_set(item: str, params: dict[str, Any]) -> str:
    key, sep, _ = item.partition("=")
    if not sep:
        raise StudyError(f"-S {item}: expected KEY=VALUE, such as -S train.max_steps=200")
    if key in GRID_KEYS:
        raise StudyError(f"-S {item}: the grid sets {key}; use {GRID_KEYS[key]}")
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            valid = ", ".join(sorted(_flat_keys(params)))
            raise StudyError(f"-S {item}: params.yaml has no {key}; valid keys: {valid}")
        node = node[part]
    return item


def _flat_keys(params: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for name, value in params.items():
        keys += _flat_keys(value, f"{prefix}{name}.") if isinstance(value, dict) else [f"{prefix}{name}"]
    return keys


def _apply(params_file: Path, overrides: tuple[str, ...], label: str) -> dict[str, Any]:
    """params.yaml as `dvc exp run -S` will write it (DVC's own override parser), checked as every stage checks it."""
    from dvc.utils.hydra import apply_overrides

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "params.yaml"
        shutil.copy(params_file, copy)
        try:
            apply_overrides(copy, list(overrides))
        except Exception as err:  # DVC's parser raises its own types; the cause names the bad value
            raise StudyError(f"{label}: DVC cannot apply {' '.join(overrides)}: {err.__cause__ or err}") from None
        params = yaml.safe_load(copy.read_text(encoding="utf-8"))
    try:
        config_from_dict(params)
    except LlamaPeError as err:
        raise StudyError(f"{label}: {err}") from None
    return params


# ---------------------------------------------------------------------------------------------- what exists


class Experiments:
    """The repo's experiments as DVC lists them, each matched to grid points by params and source files."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.code_paths = _code_paths(repo)
        self.pipeline = _pipeline((repo / "dvc.yaml").read_text(encoding="utf-8"))
        self._params: dict[str, Any] = {}  # rev -> its params.yaml (a revision never changes)
        self._same_code: dict[str, bool] = {}

    def records(self) -> list[dict[str, Any]]:
        """Every experiment: the finished ones of every commit (`dvc exp list`), the queue's (`dvc queue status`).

        Not `dvc exp show`: while an experiment finishes it reads the experiment's temporary repo as DVC deletes
        it, and can wait forever (seen with DVC 3.67); these two read only refs and the queue.
        """
        # Every commit's: a point made at an earlier commit with today's code is still that point.
        listed = self._dvc("exp", "list", "--all-commits")
        records = [{"Experiment": name, "rev": rev, "state": "done"} for rev, name in FINISHED.findall(listed)]
        for rev, name, state in QUEUE_ENTRY.findall(self._dvc("queue", "status")):
            if state != "Success":  # a success is a finished experiment, listed above
                records.append({"Experiment": name, "rev": rev, "state": state.lower()})
        return records

    def matches(self, point: Point, record: dict[str, Any]) -> bool:
        rev = record["rev"]
        if rev not in self._params:
            shown = self._git("show", f"{rev}:params.yaml")
            self._params[rev] = yaml.safe_load(shown.stdout) if shown.returncode == 0 else None
        if self._params[rev] != point.params:
            return False
        if rev not in self._same_code:
            shown = self._git("show", f"{rev}:dvc.yaml")
            same_stages = shown.returncode == 0 and _pipeline(shown.stdout) == self.pipeline
            same_files = self._git("diff", "--quiet", rev, "--", *self.code_paths).returncode == 0
            self._same_code[rev] = same_stages and same_files
        return self._same_code[rev]

    def status(self, points: list[Point]) -> dict[Point, tuple[str, dict[str, Any] | None]]:
        """Each point's most advanced experiment and its state; ("missing", None) when it has none."""
        records = self.records()
        result: dict[Point, tuple[str, dict[str, Any] | None]] = {}
        for point in points:
            found = [(STATES.index(r["state"]), r) for r in records if self.matches(point, r)]
            rank, record = min(found, key=lambda item: item[0]) if found else (None, None)
            result[point] = (STATES[rank], record) if record is not None else ("missing", None)
        return result

    def _git(self, *args: str) -> subprocess.CompletedProcess:
        return _git(self.repo, *args)

    def _dvc(self, *args: str) -> str:
        done = subprocess.run(["dvc", *args], cwd=self.repo, capture_output=True, text=True)
        if done.returncode != 0:
            raise StudyError(f"dvc {' '.join(args)} failed:\n{_tail(done.stdout + done.stderr)}")
        return done.stdout


def _pipeline(dvc_yaml: str) -> dict[str, Any]:
    """What makes a stage's results: its command, dependencies and params (not how its outputs are stored)."""
    stages = yaml.safe_load(dvc_yaml).get("stages", {})
    return {name: {key: stage.get(key) for key in ("cmd", "deps", "params")} for name, stage in stages.items()}


def _code_paths(repo: Path) -> list[str]:
    """Every dependency of the stages that git tracks and no stage makes: the source files an experiment runs."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    made = {_path(out) for stage in stages.values() for kind in ("outs", "metrics", "plots")
            for out in stage.get(kind, [])}  # fmt: skip
    deps = {dep for stage in stages.values() for dep in stage.get("deps", [])}
    deps = sorted(d for d in deps if not any(d == m or d.startswith(f"{m}/") for m in made))
    tracked = subprocess.run(["git", "ls-files", "--", *deps], cwd=repo, capture_output=True, text=True, check=True)
    return sorted(set(tracked.stdout.split()))


def _path(entry: str | dict[str, Any]) -> str:
    return entry if isinstance(entry, str) else next(iter(entry))  # "- metrics/train.json: {cache: false}"


# ---------------------------------------------------------------------------------------------- running


def queue_point(repo: Path, point: Point) -> str:
    """`dvc exp run --queue` with the point's overrides; the experiment's name."""
    args = ["dvc", "exp", "run", "--queue", *(a for o in point.overrides for a in ("-S", o))]
    done = subprocess.run(args, cwd=repo, capture_output=True, text=True)
    name = re.search(r"Queued experiment '([^']+)'", done.stdout + done.stderr)
    if done.returncode != 0 or not name:
        raise StudyError(f"{point.label}: {' '.join(args)} failed:\n{_tail(done.stdout + done.stderr)}")
    return name.group(1)


@contextmanager
def branch_kept(repo: Path) -> Iterator[None]:
    """Leave HEAD on the branch it was on. `dvc exp run --queue` checks the baseline commit out detached and goes
    back to the branch when it is done; stopped in between (Ctrl-C while a grid is being queued) it leaves HEAD
    detached, and the user's next commits land on no branch. HEAD is put back only where it still is the branch's
    commit, so the work tree is not touched; elsewhere the user is told what happened."""
    branch = _current_branch(repo)
    try:
        yield
    finally:
        if branch is not None and _current_branch(repo) is None:
            head, tip = (_git_rev(repo, rev) for rev in ("HEAD", f"refs/heads/{branch}"))
            if head == tip:
                _git(repo, "symbolic-ref", "HEAD", f"refs/heads/{branch}")
                log.warning("DVC left HEAD detached while queueing; it is back on branch %s", branch)
            else:
                log.error(
                    "DVC left HEAD detached at %s while queueing, not at %s's commit %s: check `git status` before "
                    "committing (`git checkout %s` goes back)", head[:7], branch, tip[:7], branch,
                )  # fmt: skip


def _current_branch(repo: Path) -> str | None:
    """The branch HEAD is on; None when HEAD is detached."""
    ref = _git(repo, "symbolic-ref", "-q", "--short", "HEAD")
    return ref.stdout.strip() if ref.returncode == 0 else None


def _git_rev(repo: Path, rev: str) -> str:
    return _git(repo, "rev-parse", rev).stdout.strip()


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)


def start_workers(repo: Path, jobs: int) -> None:
    """`dvc queue start -j N`: DVC starts the workers that are not running yet and leaves the others be."""
    subprocess.Popen(  # it lingers while its workers start up; they outlive it and this process
        ["dvc", "queue", "start", "-j", str(jobs)], cwd=repo, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def failure_log(repo: Path, name: str) -> str:
    logs = subprocess.run(["dvc", "queue", "logs", name], cwd=repo, capture_output=True, text=True)
    return _tail(logs.stdout + logs.stderr)


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines()[-lines:])


@dataclass
class StudyResult:
    finished: dict[Point, dict[str, Any]]
    failed: dict[Point, dict[str, Any]]
    queued: list[str]


def run_study(
    repo: Path, points: list[Point], jobs: int = 1, poll_seconds: float = 15.0, dry_run: bool = False,
    on_progress: Callable[[dict[str, int]], None] | None = None, before_queueing: Callable[[], None] | None = None,
) -> StudyResult:  # fmt: skip
    """Queue the points that have no experiment yet, start DVC's queue and wait until none is queued or running.

    before_queueing: called when there is something to queue, before anything is (a check that may refuse).
    """
    experiments = Experiments(repo)
    status = experiments.status(points)
    to_queue = [p for p in points if status[p][0] in ("missing", "failed")]
    log.info("%d grid points: %d already have an experiment, %d to queue%s", len(points),
             len(points) - len(to_queue), len(to_queue), " (dry run: nothing queued)" if dry_run else "")  # fmt: skip
    for point in points:
        state, record = status[point]
        log.info("  %-28s %s%s", point.label, state, f" ({record['Experiment']})" if record else "")
    if to_queue and before_queueing is not None:
        before_queueing()
    if dry_run:
        return StudyResult({}, {}, [])
    with branch_kept(repo):
        queued = [queue_point(repo, point) for point in to_queue]
    idle_polls = 0
    while True:
        status = experiments.status(points)
        counts = {state: sum(s == state for s, _ in status.values()) for state in (*STATES, "missing")}
        if on_progress:
            on_progress(counts)
        if counts["running"] + counts["queued"] == 0:
            break
        # DVC starts only the workers that are missing, so asking again is safe; it revives a queue whose worker
        # stopped (a worker started before the grid was queued may have found it empty and quit).
        idle_polls = idle_polls + 1 if counts["running"] == 0 else 0
        if idle_polls % 8 == 1:
            start_workers(repo, jobs)
        time.sleep(poll_seconds)
    finished = {p: r for p, (s, r) in status.items() if s == "done"}
    failed = {p: r for p, (s, r) in status.items() if s in ("failed", "missing")}
    return StudyResult(finished, failed, queued)


def finished_records(repo: Path, finished: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The finished experiments' params and metrics as `dvc exp show` has them (nothing of the grid runs now)."""
    from llama_pe.experiments import exp_show

    revs = {record["rev"][:7] for record in finished}
    return [r for r in exp_show(repo, num=-1) if r.get("Experiment") and r["rev"][:7] in revs]


def study(
    repo: Path, pos: str, seeds: str, hf: bool, sets: list[str], jobs: int, out_dir: Path, baseline: list[str],
    poll_seconds: float = 15.0, dry_run: bool = False, force: bool = False, primary: list[str] | None = None,
) -> None:  # fmt: skip
    """`llama-pe study`: check the grid, run what is missing through DVC's queue, report the whole grid.

    A report of new runs changes a committed report in out_dir: without `force` that is refused before anything is
    queued, not after the training; with nothing to queue, the report is written if it changes no committed file.
    primary: the report's headline metrics, as for `llama-pe report --primary`, checked before anything is queued.
    """
    from tqdm import tqdm

    from llama_pe.experiments import (
        ReportError,
        baseline_conditions,
        experiments_frame,
        primary_endpoints,
        read_val_curves,
    )
    from llama_pe.report_writer import refuse_committed_folder, write_report

    if jobs < 1:
        raise StudyError(f"--jobs: expected a number of queue workers >= 1, got {jobs}")
    endpoints = primary_endpoints(primary)  # a report setting, checked before the grid is even read
    points = parse_grid(pos, seeds, hf, sets, repo / "params.yaml")

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

        result = run_study(repo, points, jobs, poll_seconds, dry_run, progress, None if force else check_out_dir)
    if dry_run:
        return
    for point, record in result.failed.items():
        if record is None:
            log.error("%s: its experiment left the queue without running (removed?)", point.label)
        else:
            log.error("%s: experiment %s failed; the end of its log:\n%s", point.label, record["Experiment"],
                      failure_log(repo, record["Experiment"]))  # fmt: skip
    if result.finished:
        frame = experiments_frame(finished_records(repo, result.finished.values()))
        order = {record["rev"][:7]: index for index, record in enumerate(result.finished.values())}
        frame = frame.sort_values("rev", key=lambda revs: revs.str[:7].map(order)).reset_index(drop=True)  # grid order
        write_report(frame, out_dir, baseline_conditions(frame, baseline), read_val_curves(repo, frame), force,
                     endpoints)  # fmt: skip
    if result.failed:
        names = ", ".join(point.label for point in result.failed)
        raise StudyError(
            f"{len(result.failed)} of {len(points)} experiments failed ({names})"
            f"{'; the report holds the others' if result.finished else ''}. Fix the cause and run the same command "
            "again: finished experiments are not trained again"
        )
