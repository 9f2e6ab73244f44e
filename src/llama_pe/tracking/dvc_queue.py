"""The one place the study talks to DVC's queue and git: what experiments exist and in what state, queueing a
point, starting the workers, the log of a failed one, and keeping HEAD on its branch while DVC queues.

Experiments and the queue are read through DVC's structured interface, `dvc exp show --json`, which gives each
experiment and queued task with its executor's state in one read (llama_pe.commands.study decides what to queue and
waits); every read has a time limit and is tried again before it counts as failed.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llama_pe.errors import LlamaPeError
from llama_pe.settings.yaml12 import load_yaml
from llama_pe.tracking.code_version import code_version

log = logging.getLogger(__name__)

# How far each state is from done; a point shows the most advanced of its experiments.
STATES = ("done", "running", "queued", "failed")
# `dvc exp show --json`'s executor states, as the study's; an experiment without an executor is a finished one
# whose ref DVC holds (its task's record gone: cleaned up, or fetched from another machine).
EXECUTOR_STATES = {"success": "done", "running": "running", "queued": "queued", "failed": "failed", None: "done"}
READ_TIMEOUT_S = 300.0  # a read of the experiments; one that hangs (a worker deleting its repo as it is read) is cut


class StudyError(LlamaPeError, ValueError):
    """The grid cannot be run as asked, or some of its experiments failed."""


# ---------------------------------------------------------------------------------------------- what exists


READ_ATTEMPTS = 3  # how often a read of DVC's experiments is tried before the study stops on it
READ_RETRY_DELAY_S = 2.0


class Experiments:
    """The repo's experiments as DVC lists them, each matched to grid points by params and code version."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self._params: dict[str, Any] = {}  # rev -> its params.yaml (a revision never changes)
        self._codes: dict[str, str] = {}  # rev -> its code version
        self._workspace_codes: dict[str, str] = {}  # a point's params -> the workspace's code version for them

    def code_of(self, point: Any) -> str:
        """The code version the workspace runs `point` with, which every queued experiment of it runs."""
        key = json.dumps(point.params, sort_keys=True)
        if key not in self._workspace_codes:
            self._workspace_codes[key] = code_version(self.repo, params=point.params)
        return self._workspace_codes[key]

    def records(self) -> list[dict[str, Any]]:
        """Every experiment of HEAD and of every commit that experiments hang from, and every queued task, each
        with its state: one `dvc exp show --json` read, so a point that finishes between two reads is running in
        the first and done in the second, never in neither."""
        shown = json.loads(
            self._dvc("exp", "show", "--json", "--no-fetch", *(a for b in self._baselines() for a in ("--rev", b)))
        )
        records = []
        for baseline in shown if isinstance(shown, list) else []:
            for experiment in baseline.get("experiments") or []:
                state = EXECUTOR_STATES.get((experiment.get("executor") or {}).get("state"), "failed")
                for rev in experiment.get("revs") or []:
                    records.append(
                        {"Experiment": rev.get("name") or experiment.get("name"), "rev": rev["rev"], "state": state}
                    )
        return records

    def _baselines(self) -> list[str]:
        """HEAD (where the study queues) and every commit an experiment's ref names (refs/exps/ab/cdef.../name)."""
        refs = self._git("for-each-ref", "--format=%(refname)", "refs/exps").stdout.split()
        found = {f"{parts[2]}{parts[3]}" for ref in refs if len(parts := ref.split("/")) == 5 and len(parts[2]) == 2}
        return ["HEAD", *sorted(found)]

    def matches(self, point: Any, record: dict[str, Any]) -> bool:
        rev = record["rev"]
        if rev not in self._params:
            shown = self._git("show", f"{rev}:params.yaml")
            if shown.returncode != 0:  # not readable yet (a commit DVC has not fetched): asked again next poll
                return False
            self._params[rev] = load_yaml(shown.stdout)
        if self._params[rev] != point.params:
            return False
        if rev not in self._codes:
            self._codes[rev] = code_version(self.repo, rev)
        return self._codes[rev] == self.code_of(point)

    def status(self, points: list[Any]) -> dict[Any, tuple[str, dict[str, Any] | None]]:
        """Each point's most advanced experiment and its state; ("missing", None) when it has none."""
        records = self.records()
        result: dict[Any, tuple[str, dict[str, Any] | None]] = {}
        for point in points:
            found = [(STATES.index(r["state"]), r) for r in records if self.matches(point, r)]
            rank, record = min(found, key=lambda item: item[0]) if found else (None, None)
            result[point] = (STATES[rank], record) if record is not None else ("missing", None)
        return result

    def _git(self, *args: str) -> subprocess.CompletedProcess:
        return _git(self.repo, *args)

    def _dvc(self, *args: str) -> str:
        """A read, cut after READ_TIMEOUT_S and tried again before it counts as failed: a read can fail once on a
        task's result file that a worker is still writing ("unexpected error - Expecting value: line 1 column 1",
        seen with DVC 3.67 and two workers; treeverse/dvc#8014 is the same kind), or wait on an experiment's
        temporary repo that DVC deletes as it finishes, and one failed read must not stop a study of hours."""
        for attempt in range(1, READ_ATTEMPTS + 1):
            try:
                done = subprocess.run(
                    ["dvc", *args], cwd=self.repo, capture_output=True, text=True, timeout=READ_TIMEOUT_S
                )
                output, ok = done.stdout + done.stderr, done.returncode == 0
            except subprocess.TimeoutExpired:
                output, ok = f"no answer in {READ_TIMEOUT_S:g} s", False
            if ok:
                return done.stdout
            if attempt < READ_ATTEMPTS:
                log.warning(
                    "dvc %s failed (attempt %d of %d), reading again", " ".join(args[:2]), attempt, READ_ATTEMPTS
                )
                time.sleep(READ_RETRY_DELAY_S)
        raise StudyError(f"dvc {' '.join(args[:2])} failed {READ_ATTEMPTS} times:\n{_tail(output)}")


# ---------------------------------------------------------------------------------------------- running


def queue_point(repo: Path, point: Any) -> str:
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
                    "committing (`git checkout %s` goes back)",
                    head[:7],
                    branch,
                    tip[:7],
                    branch,
                )


def _current_branch(repo: Path) -> str | None:
    """The branch HEAD is on; None when HEAD is detached."""
    ref = _git(repo, "symbolic-ref", "-q", "--short", "HEAD")
    return ref.stdout.strip() if ref.returncode == 0 else None


def _git_rev(repo: Path, rev: str) -> str:
    return _git(repo, "rev-parse", rev).stdout.strip()


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)


QUEUE_START_TIMEOUT_S = 120.0


def start_workers(repo: Path, jobs: int) -> None:
    """`dvc queue start -j N`: DVC starts the workers that are not running yet and leaves the others be.

    Run to its end between two reads of the queue, not beside them, and a failure is said: started in the
    background it could fail unseen (its output discarded) on every revival while a queued point waited with no
    worker. The workers it starts are processes of their own, which outlive it and this one.
    """
    try:
        done = subprocess.run(
            ["dvc", "queue", "start", "-j", str(jobs)],
            cwd=repo,
            start_new_session=True,
            capture_output=True,
            text=True,
            timeout=QUEUE_START_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        log.warning("dvc queue start gave no answer in %.0f s; asked again at a later poll", QUEUE_START_TIMEOUT_S)
        return
    if done.returncode != 0:
        log.warning("dvc queue start failed; asked again at a later poll:\n%s", _tail(done.stdout + done.stderr))


def failure_log(repo: Path, name: str) -> str:
    logs = subprocess.run(["dvc", "queue", "logs", name], cwd=repo, capture_output=True, text=True)
    return _tail(logs.stdout + logs.stderr)


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines()[-lines:])
