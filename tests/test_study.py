"""`llama-pe study`: the grid it builds and checks, and end to end on DVC's queue in a temporary repo."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from llama_pe.analysis.ledger import Ledger, LedgerError, flat_params
from llama_pe.commands.study import StudyError, branch_kept
from llama_pe.commands.study_grid import parse_grid, split_values
from llama_pe.positions.catalogue import ENCODINGS
from llama_pe.positions.rope_scaling import ROPE_SCALING_METHODS
from tests.conftest import committed_path, committed_text, generate_corpus, make_dvc_project, run, tiny_pipeline_params

PARAMS = committed_path("params.yaml")


def test_the_grid_goes_seed_by_seed_and_sets_each_point_as_dvc_would():
    points = parse_grid("rope,alibi", "0,1", True, ["train.max_steps=7", "model.dim=288"], PARAMS)
    assert [p.label for p in points] == [
        "rope native seed 0",
        "alibi native seed 0",
        "rope hf seed 0",
        "rope native seed 1",
        "alibi native seed 1",
        "rope hf seed 1",
    ]
    hf = points[2]
    assert hf.overrides == ("model.impl=hf", "model.pos=rope", "train.seed=0", "train.max_steps=7", "model.dim=288")
    assert hf.params["model"]["impl"] == "hf" and hf.params["train"]["max_steps"] == 7
    assert points[4].params["model"]["pos"] == "alibi" and points[4].params["train"]["seed"] == 1
    unchanged = yaml.safe_load(PARAMS.read_text())
    assert points[0].params["eval"] == unchanged["eval"] and points[0].params["data"] == unchanged["data"]


def test_a_repeated_encoding_or_seed_is_one_point():
    assert len(parse_grid("rope,rope", "0,0,1", False, [], PARAMS)) == 2


def test_hugging_faces_llama_runs_alone_at_a_setting_of_its_own():
    points = parse_grid("", "0,1", True, ["train.lr=0.004"], PARAMS)
    assert [p.label for p in points] == ["rope hf seed 0", "rope hf seed 1"]
    assert {(p.params["model"]["impl"], p.params["train"]["lr"]) for p in points} == {("hf", 0.004)}


@pytest.mark.parametrize(
    ("pos", "seeds", "sets", "message"),
    [
        ("rope,xpos", "0", [], rf"--pos: unknown encoding 'xpos'; valid: {', '.join(ENCODINGS)}$"),
        ("", "0", [], rf"--pos: expected encodings separated by commas; valid: {', '.join(ENCODINGS)} \(--pos ''"),
        ("rope", "0,one", [], r"--seeds: expected integers separated by commas, such as 0,1,2; got '0,one'"),
        ("rope", "0", ["train.steps=3"], r"-S train\.steps=3: params\.yaml has no train\.steps; valid keys: "),
        ("rope", "0", ["train.max_steps"], r"-S train\.max_steps: expected KEY=VALUE"),
        ("rope", "0", ["model.pos=alibi"], r"-S model\.pos=alibi: the grid sets model\.pos; use --pos"),
        ("rope", "0", ["train.seed=3"], r"the grid sets train\.seed; use --seeds"),
        ("rope", "0", ["model.size=huge"], r"rope native seed 0: model\.size: unknown size 'huge'; valid sizes: tiny"),
        ("rope", "0", ["model.dim=250"], r"rope native seed 0: model\.dim: 250 is not divisible by model\.n_heads=6"),
    ],
)
def test_bad_grids_are_refused_before_anything_is_queued(pos, seeds, sets, message):
    with pytest.raises(StudyError, match=message):
        parse_grid(pos, seeds, False, sets, PARAMS)


def test_a_sweep_multiplies_the_grid_seed_by_seed():
    points = parse_grid(
        "rope,alibi",
        "0,1",
        False,
        ["train.max_steps=7"],
        PARAMS,
        ["train.lr=0.001,0.004", "eval.contexts=[1,2],[1,2,4]"],
    )
    assert len(points) == 2 * 2 * 2 * 2
    assert [p.label for p in points[:3]] == [
        "rope native seed 0 train.lr=0.001 eval.contexts=[1,2]",
        "alibi native seed 0 train.lr=0.001 eval.contexts=[1,2]",
        "rope native seed 0 train.lr=0.001 eval.contexts=[1,2,4]",
    ]
    assert {p.params["train"]["seed"] for p in points[:8]} == {0}  # whole seeds first
    assert {(p.params["train"]["lr"], tuple(p.params["eval"]["contexts"])) for p in points} == {
        (0.001, (1, 2)),
        (0.001, (1, 2, 4)),
        (0.004, (1, 2)),
        (0.004, (1, 2, 4)),
    }
    assert all(p.params["train"]["max_steps"] == 7 for p in points)
    # Two spellings of one value make one params.yaml: one experiment.
    assert len(parse_grid("rope", "0", False, [], PARAMS, ["train.lr=0.002,2.0e-3,0.004"])) == 2
    # Values without a dot, as DVC writes them (YAML 1.2), are numbers: in -S and in --sweep.
    small = parse_grid("rope", "0", False, ["train.min_lr=1e-9"], PARAMS, ["train.lr=1e-5,3e-5"])
    assert [(p.params["train"]["lr"], p.params["train"]["min_lr"]) for p in small] == [(1e-5, 1e-9), (3e-5, 1e-9)]


def test_values_split_at_the_commas_outside_brackets_and_quotes():
    assert split_values("1,2") == ["1", "2"]
    assert split_values("[1,2],[1, 2, 4]") == ["[1,2]", "[1, 2, 4]"]
    assert split_values("'a,b',c") == ["'a,b'", "c"]


@pytest.mark.parametrize(
    ("sets", "sweeps", "message"),
    [
        ([], ["train.lrr=1,2"], r"--sweep train\.lrr=1,2: params\.yaml has no train\.lrr; valid keys: data\.sha256, "),
        ([], ["model.pos=rope,alibi"], r"--sweep model\.pos=rope,alibi: the grid sets model\.pos; use --pos$"),
        ([], ["train.seed=0,1"], r"--sweep train\.seed=0,1: the grid sets train\.seed; use --seeds$"),
        ([], ["model.impl=native,hf"], r"the grid sets model\.impl; use --hf$"),
        (["train.lr=0.01"], ["train.lr=0.001,0.002"],
         r"--sweep train\.lr=0\.001,0\.002: -S sets train\.lr for the whole grid too; give it to one of them"),
        ([], ["train.lr=1", "train.lr=2"], r"--sweep train\.lr=2: train\.lr is swept twice; give all its values"),
        ([], ["train.lr"], r"--sweep train\.lr: expected KEY=V1,V2,\.\.\., such as --sweep train\.lr=0\.001,0\.002"),
        ([], ["train.lr=0.001,,0.002"], r"--sweep train\.lr=0\.001,,0\.002: expected values separated by commas, none"),
        ([], ["train.lr=0.001,-1"], r"rope native seed 0 train\.lr=-1: train\.lr: expected a positive number, got -1"),
        ([], ["train.pos_lr_scale=10,0"], r"train\.pos_lr_scale=0: train\.pos_lr_scale: expected a positive number"),
        ([], ["model.size=tiny,huge"], r"model\.size=huge: model\.size: unknown size 'huge'; valid sizes: tiny"),
    ],
)  # fmt: skip
def test_bad_sweeps_are_refused_before_anything_is_queued(sets, sweeps, message):
    with pytest.raises(StudyError, match=message):
        parse_grid("rope", "0", False, sets, PARAMS, sweeps)


# ---------------------------------------------------------------------------------------------- end to end


def git_repo_with_two_commits(root: Path) -> Path:
    identity = ["-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(root)], check=True)
    for n in (1, 2):
        (root / "file.txt").write_text(str(n))
        subprocess.run(["git", "add", "file.txt"], cwd=root, check=True)
        subprocess.run(["git", *identity, "commit", "-q", "-m", str(n)], cwd=root, check=True)
    return root


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True).stdout.strip()


def test_head_left_detached_at_the_branchs_commit_while_queueing_goes_back_on_the_branch(tmp_path, caplog):
    repo = git_repo_with_two_commits(tmp_path)
    with pytest.raises(KeyboardInterrupt), branch_kept(repo):
        subprocess.run(["git", "checkout", "-q", "--detach"], cwd=repo, check=True)  # what a stopped DVC leaves
        raise KeyboardInterrupt
    assert git(repo, "symbolic-ref", "--short", "HEAD") == "main"
    assert git(repo, "status", "--porcelain") == ""
    assert "back on branch main" in caplog.text


def test_head_detached_elsewhere_is_left_alone_and_named(tmp_path, caplog):
    repo = git_repo_with_two_commits(tmp_path)
    first = git(repo, "rev-parse", "HEAD~1")
    with branch_kept(repo):
        subprocess.run(["git", "checkout", "-q", first], cwd=repo, check=True)
    assert git(repo, "rev-parse", "HEAD") == first and git(repo, "symbolic-ref", "-q", "HEAD") == ""
    assert f"detached at {first[:7]}" in caplog.text and "git checkout main" in caplog.text


def test_a_head_detached_before_queueing_stays_detached(tmp_path):
    repo = git_repo_with_two_commits(tmp_path)
    subprocess.run(["git", "checkout", "-q", "--detach"], cwd=repo, check=True)
    with branch_kept(repo):
        pass
    assert git(repo, "symbolic-ref", "-q", "HEAD") == ""


class NoExperiments:
    """Experiments as a repo without any has them: every point is missing."""

    code = "c0dec0dec0de"  # the workspace's code version, for every point

    def __init__(self, repo: Path) -> None:
        pass

    def code_of(self, point) -> str:
        return self.code

    def status(self, points):
        return {point: ("missing", None) for point in points}


def test_a_committed_report_is_refused_before_anything_is_queued(tmp_path, monkeypatch, caplog):
    from llama_pe.analysis.experiments import ReportError
    from llama_pe.commands import study as study_module

    repo = git_repo_with_two_commits(tmp_path)
    (repo / "params.yaml").write_text(PARAMS.read_text())
    (repo / "reports").mkdir()
    (repo / "reports" / "comparison.md").write_text("the committed study\n")
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "study"], cwd=repo, check=True)
    monkeypatch.chdir(repo)
    monkeypatch.setattr(study_module, "Experiments", NoExperiments)
    monkeypatch.setattr(study_module, "GONE_AFTER_S", 0.0)  # a queued point DVC never shows is gone at once
    queued = []
    monkeypatch.setattr(study_module, "queue_point", lambda repo, point: queued.append(point.label))
    grid = dict(
        pos="rope",
        seeds="0",
        hf=False,
        sets=[],
        jobs=1,
        out_dir=Path("reports"),
        baseline=[],
        ledger_path=Path("reports/ledger.csv"),
    )
    with pytest.raises(
        ReportError,
        match=r"^--out reports: the report would change 1 committed file there "
        r"\(comparison\.md\); give --out a new folder to write it elsewhere, or --force to overwrite",
    ):
        study_module.study(repo, **grid)
    assert queued == []

    study_module.study(repo, **grid, dry_run=True)  # says so, and goes on saying what it would queue
    assert "--out reports: the report would change 1 committed file there" in caplog.text
    with pytest.raises(StudyError, match="1 of 1 experiments failed"):  # queued, then gone: NoExperiments
        study_module.study(repo, **{**grid, "out_dir": Path("elsewhere")})
    with pytest.raises(StudyError, match="1 of 1 experiments failed"):
        study_module.study(repo, **grid, force=True)
    assert queued == ["rope native seed 0"] * 2


def shown(*experiments: tuple[str, str, str | None]) -> str:
    """`dvc exp show --json` of one baseline with these (name, rev, executor state) experiments, as DVC 3 gives it."""
    entries = [
        {
            "name": name,
            "executor": None if state is None else {"state": state, "name": "dvc-task", "local": {}},
            "revs": [{"rev": rev, "name": name, "data": {}, "error": None, "experiments": None}],
        }
        for name, rev, state in experiments
    ]
    return json.dumps([{"rev": "workspace"}, {"rev": "b" * 40, "name": "main", "experiments": entries}])


def test_an_experiment_that_finishes_between_two_polls_is_running_then_done_never_missing():
    """CI saw it when the state came from two reads (the queue's, then the list's): the last experiment was in
    neither, and the study stopped. One structured read gives each experiment once, with its executor's state."""
    from llama_pe.commands import study as study_module

    polls = iter(
        [
            shown(("valid-slew", "5" * 40, "running"), ("next-one", "6" * 40, "queued")),
            shown(("valid-slew", "a" * 40, "success"), ("next-one", "6" * 40, "running")),
            shown(("valid-slew", "a" * 40, None), ("next-one", "7" * 40, "failed")),  # its task record cleaned up
        ]
    )
    asked = []

    def dvc(*args: str) -> str:
        asked.append(args)
        return next(polls)

    experiments = study_module.Experiments.__new__(study_module.Experiments)  # no repository needed to read
    experiments._dvc = dvc
    experiments._baselines = lambda: ["HEAD", "c" * 40]
    states = [{r["Experiment"]: (r["state"], r["rev"][0]) for r in experiments.records()} for _ in range(3)]
    assert states == [
        {"valid-slew": ("running", "5"), "next-one": ("queued", "6")},
        {"valid-slew": ("done", "a"), "next-one": ("running", "6")},
        {"valid-slew": ("done", "a"), "next-one": ("failed", "7")},
    ]
    assert asked[0] == ("exp", "show", "--json", "--no-fetch", "--rev", "HEAD", "--rev", "c" * 40)


def test_a_read_that_fails_or_hangs_is_read_again_and_three_failures_stop_the_study(monkeypatch):
    """A read failed once on a result file a worker was writing; the study stopped after an hour's runs."""
    from llama_pe.commands import study as study_module
    from llama_pe.tracking import dvc_queue

    outputs = iter(
        [
            (255, "ERROR: unexpected error - Expecting value: line 1 column 1 (char 0)\n"),
            (None, ""),  # no answer: cut after READ_TIMEOUT_S
            (0, shown(("valid-slew", "a" * 40, "running"))),
        ]
    )

    def run(command, **kwargs):
        assert kwargs["timeout"] == dvc_queue.READ_TIMEOUT_S
        code, text = next(outputs)
        if code is None:
            raise subprocess.TimeoutExpired(command, kwargs["timeout"])
        return subprocess.CompletedProcess(command, code, stdout=text, stderr="")

    monkeypatch.setattr(dvc_queue.subprocess, "run", run)
    monkeypatch.setattr(dvc_queue, "READ_RETRY_DELAY_S", 0.0)
    experiments = study_module.Experiments.__new__(study_module.Experiments)
    experiments.repo = Path(".")
    experiments._baselines = lambda: ["HEAD"]
    assert [r["Experiment"] for r in experiments.records()] == ["valid-slew"]

    outputs = iter([(255, "ERROR: unexpected error\n")] * dvc_queue.READ_ATTEMPTS)
    with pytest.raises(StudyError, match=r"dvc exp show failed 3 times:\n.*unexpected error"):
        experiments.records()


def test_the_baselines_are_head_and_every_commit_an_experiment_hangs_from(tmp_path):
    from llama_pe.tracking.dvc_queue import Experiments

    repo = git_repo_with_two_commits(tmp_path)
    first, second = (git(repo, "rev-parse", rev).strip() for rev in ("HEAD~1", "HEAD"))
    for commit, name in ((first, "old-exp"), (second, "new-exp")):
        git(repo, "update-ref", f"refs/exps/{commit[:2]}/{commit[2:]}/{name}", commit)
    assert Experiments(repo)._baselines() == ["HEAD", *sorted({first, second})]


def ledger_row(point, code: str, loss: float) -> dict:
    """A finished experiment of the point, as another machine wrote it into the ledger."""
    name = point.label.replace(" ", "-")
    return {
        "experiment": name,
        "rev": hashlib.sha1(name.encode()).hexdigest(),
        "commit": "a" * 40,
        "date": "2025-01-02T03:04:05+00:00",
        "code": code,
        "cpu": "Another CPU",
        "device": "cpu",
        "accelerator": None,
        **flat_params(point.params),
        "best_val_loss": loss,
        "test_ppl": 300.0,
        "holdout_bpc": 2.3,
        "ppl_at_1x": 300.0,
    }


class ShownAfter(NoExperiments):
    """Experiments where the queued point is shown nowhere for the first `unseen` polls (between DVC's queue and
    its run), then as failed; `unseen=None`: never shown."""

    unseen: int | None = 2

    def __init__(self, repo: Path) -> None:
        self.polls = 0

    def status(self, points):
        self.polls += 1
        if self.unseen is None or self.polls <= self.unseen + 1:  # the first read is before anything is queued
            return {point: ("missing", None) for point in points}
        return {point: ("failed", {"Experiment": "valid-slew", "rev": "ab6aa50"}) for point in points}


@pytest.mark.parametrize("unseen", [2, None])
def test_a_queued_point_shown_nowhere_for_a_moment_is_waited_for_and_one_never_shown_is_gone(
    tmp_path, monkeypatch, unseen
):
    """CI saw it under load: as the first of two experiments finished, the second was in neither the queue nor the
    list for one poll, then ran; the study had stopped, calling it gone."""
    from llama_pe.commands import study as study_module

    repo = committed_repo(tmp_path)
    monkeypatch.setattr(ShownAfter, "unseen", unseen)
    monkeypatch.setattr(study_module, "Experiments", ShownAfter)
    monkeypatch.setattr(study_module, "queue_point", lambda repo, point: point.label)
    monkeypatch.setattr(study_module, "start_workers", lambda repo, jobs: None)
    monkeypatch.setattr(study_module, "GONE_AFTER_S", 0.2)
    points = parse_grid("rope", "0", False, [], PARAMS)
    result = study_module.run_study(repo, points, poll_seconds=0.01, ledger=Ledger.read(repo / "reports/ledger.csv"))
    if unseen is None:
        assert result.failed == {points[0]: None}  # left the queue unrun: said so, after GONE_AFTER_S
    else:
        assert result.failed == {points[0]: {"Experiment": "valid-slew", "rev": "ab6aa50"}}


def committed_repo(root: Path) -> Path:
    repo = git_repo_with_two_commits(root)
    (repo / "params.yaml").write_text(PARAMS.read_text())
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "p"], cwd=repo, check=True)
    return repo


def test_a_point_the_ledger_holds_is_not_queued_and_is_reported_from_the_ledger(tmp_path, monkeypatch, caplog):
    from llama_pe.commands import study as study_module

    caplog.set_level(logging.INFO, logger="llama_pe")
    repo = committed_repo(tmp_path)
    monkeypatch.chdir(repo)
    monkeypatch.setattr(study_module, "Experiments", NoExperiments)
    monkeypatch.setattr(study_module, "GONE_AFTER_S", 0.0)  # a queued point DVC never shows is gone at once
    queued = []
    monkeypatch.setattr(study_module, "queue_point", lambda repo, point: queued.append(point.label))
    rope, alibi = parse_grid("rope,alibi", "0", False, [], PARAMS)
    ledger = Ledger.read(repo / "reports/ledger.csv")
    # The same point by other code: not this study's.
    ledger.append([ledger_row(rope, NoExperiments.code, 5.1), ledger_row(alibi, "0ther0c0de00", 5.0)])
    grid = dict(
        pos="rope,alibi",
        seeds="0",
        hf=False,
        sets=[],
        jobs=1,
        out_dir=Path("out"),
        baseline=[],
        ledger_path=Path("reports/ledger.csv"),
    )
    with pytest.raises(StudyError, match=r"1 of 2 experiments failed \(alibi native seed 0\); the report holds"):
        study_module.study(repo, **grid)  # alibi: queued, then gone (NoExperiments)
    assert queued == ["alibi native seed 0"]
    assert "rope native seed 0           done (rope-native-seed-0, in the ledger)" in caplog.text
    runs = pd.read_csv(repo / "out" / "runs.csv")
    assert runs["name"].tolist() == ["rope-native-seed-0"] and runs["cpu"].tolist() == ["Another CPU"]
    assert "is not in this repository: left out of val_curves.png" in caplog.text


def test_a_damaged_ledger_or_a_select_of_no_sweep_stops_the_study_before_any_work(tmp_path, monkeypatch):
    from llama_pe.commands import study as study_module

    repo = committed_repo(tmp_path)
    monkeypatch.chdir(repo)
    monkeypatch.setattr(study_module, "Experiments", NoExperiments)
    monkeypatch.setattr(study_module, "queue_point", lambda repo, point: pytest.fail("queued"))
    (repo / "ledger.csv").write_text("experiment,rev\n")
    grid = dict(pos="rope", seeds="0", hf=False, sets=[], jobs=1, out_dir=Path("out"), baseline=[])
    with pytest.raises(LedgerError, match=r"ledger\.csv line 1 \(the header\): no column commit, date, code, cpu"):
        study_module.study(repo, **grid, ledger_path=Path("ledger.csv"))
    with pytest.raises(
        StudyError,
        match=r"--select train\.lr: not swept by this grid; select one or more of the --sweep "
        r"keys \(train\.warmup_steps\)",
    ):
        study_module.study(
            repo,
            **grid,
            ledger_path=Path("new.csv"),
            sweeps=["train.warmup_steps=10,20"],
            select_key="train.warmup_steps,train.lr",
        )
    with pytest.raises(
        StudyError,
        match=r"^--baseline model\.pos=rope: no point of this grid is the baseline, and the report pairs every group "
        r"with it; add it to the grid \(--pos, --hf\) or name a point of the grid, such as --baseline model\.pos=abs$",
    ):
        study_module.study(repo, **{**grid, "pos": "abs,learned"}, ledger_path=Path("new.csv"))
    with pytest.raises(
        StudyError,
        match=r"--sweep train\.pos_lr_scale: the report would hold a group per value, and the baseline "
        r"\(model\.pos=t5\) one of each; add --select train\.pos_lr_scale to report each encoding at its best "
        r"value, or --baseline train\.pos_lr_scale=VALUE",
    ):
        study_module.study(
            repo,
            **{**grid, "pos": "t5,fire", "baseline": ["model.pos=t5"]},
            ledger_path=Path("new.csv"),
            sweeps=["train.lr=0.001,0.002", "train.pos_lr_scale=1,10"],
            select_key="train.lr",
        )


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A copy of the pipeline on a generated corpus with a tiny model and a few steps."""
    root = tmp_path_factory.mktemp("study")
    params = tiny_pipeline_params()
    env = make_dvc_project(root, tmp_path_factory.mktemp("mirror"), generate_corpus(n_speeches=600, seed=1), params)
    # The committed study's record, as this repository keeps it: a trial study must leave it untouched.
    (root / "reports").mkdir()
    (root / "reports/ledger.csv").write_text(committed_text("reports/ledger.csv"))
    run(["git", "add", "reports/ledger.csv"], root, env)
    run(["git", "commit", "-qm", "the committed study's ledger"], root, env)
    run(["dvc", "repro", "encode"], root, env)  # the data stages once; every experiment checks them out
    return root, env


def study(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "llama_pe.commands.cli", "study", "--poll", "2", *args]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=900)


def experiment_names(root: Path, env: dict[str, str]) -> set[str]:
    return set(run(["dvc", "exp", "list", "--all-commits", "--name-only"], root, env).split())


@pytest.mark.integration
def test_study_runs_the_grid_on_dvcs_queue_then_reports_every_group_over_its_seeds(project):
    root, env = project
    # Two queue workers: each experiment runs in its own copy of the repo, so parallel runs share no file.
    committed_ledger = (root / "reports/ledger.csv").read_bytes()
    refused = study(root, env, "--pos", "rope,alibi", "--seeds", "0,1", "--out", "reports")
    assert refused.returncode == 1 and "--ledger reports/ledger.csv to add these runs to that record" in refused.stderr
    done = study(root, env, "--pos", "rope,alibi", "--seeds", "0,1", "--jobs", "2", "--out", "reports/mine")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 to queue" in done.stderr and len(experiment_names(root, env)) == 4
    # Nothing git tracks changed: the runs went to the study's own ledger, in its --out folder.
    assert run(["git", "status", "--porcelain", "--untracked-files=no"], root, env) == ""
    assert (root / "reports/ledger.csv").read_bytes() == committed_ledger
    assert len(Ledger.read(root / "reports/mine/ledger.csv").rows) == 4

    reports = root / "reports/mine"
    expected = (
        "runs.csv",
        "summary.csv",
        "comparison.md",
        "val_curves.csv",
        "extrapolation.png",
        "val_curves.png",
        "bpc.png",
    )
    assert all((reports / name).stat().st_size > 0 for name in expected)
    runs = pd.read_csv(reports / "runs.csv")
    assert sorted(zip(runs["model.pos"], runs["train.seed"], strict=True)) == [
        ("alibi", 0),
        ("alibi", 1),
        ("rope", 0),
        ("rope", 1),
    ]
    summary = pd.read_csv(reports / "summary.csv")
    trained = {"model.pos=rope, eval.rope_scaling_method=none", "model.pos=alibi, eval.rope_scaling_method=none"}
    scaled = {f"model.pos=rope, eval.rope_scaling_method={m}" for m in ROPE_SCALING_METHODS}
    assert set(summary["group"]) == trained | scaled  # eval.rope_scaling's default: rope also scored scaled
    best = summary[summary["metric"] == "best_val_loss"].set_index("group")["n"]
    assert (best[list(trained)] == 2).all() and (best[list(scaled)] == 0).all()
    assert (summary[(summary["metric"] == "ppl_at_2x") & summary["group"].isin(scaled)]["n"] == 2).all()
    curves = pd.read_csv(reports / "val_curves.csv")
    assert set(curves["name"]) == set(runs["name"]) and set(curves["step"]) == {2, 4, 6}
    comparison = (reports / "comparison.md").read_text()
    assert "## Against model.pos=rope, eval.rope_scaling_method=none, paired by seed" in comparison

    again = study(root, env, "--pos", "rope,alibi", "--seeds", "0,1", "--out", "reports/mine")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "4 already have an experiment, 0 to queue" in again.stderr
    assert len(experiment_names(root, env)) == 4  # nothing trained again


@pytest.mark.integration
def test_an_experiment_made_by_other_code_is_not_reused(project):
    root, env = project
    model_file = root / "src/llama_pe/core/model/transformer.py"
    original = model_file.read_text()
    try:
        model_file.write_text(original + "\n# a comment: no computation\n")
        planned = study(root, env, "--pos", "rope,alibi", "--seeds", "0,1", "--dry-run")
        assert planned.returncode == 0, planned.stderr
        assert "4 already have an experiment, 0 to queue" in planned.stderr
        model_file.write_text(original + "\nLAYER_SCALE = 2.0\n")  # a statement every run executes
        planned = study(root, env, "--pos", "rope,alibi", "--seeds", "0,1", "--dry-run")
        assert planned.returncode == 0, planned.stderr
        assert "0 already have an experiment, 4 to queue" in planned.stderr
    finally:
        model_file.write_text(original)


@pytest.mark.integration
def test_a_failed_experiment_is_named_with_the_end_of_its_log(project):
    root, env = project
    # Valid params, but a window longer than the generated corpus' val split: the train stage refuses it before
    # step one, inside the queued experiment.
    failed = study(root, env, "--pos", "nope", "--seeds", "0", "-S", "train.context=2000", "--out", "reports/failed")
    assert failed.returncode == 1
    assert "nope native seed 0: experiment" in failed.stderr and "failed; the end of its log:" in failed.stderr
    assert "train.context: 2000 tokens do not fit the val split" in failed.stderr
    assert "1 of 1 experiments failed (nope native seed 0)" in failed.stderr


@pytest.mark.integration
def test_a_sweep_is_kept_in_the_ledger_and_a_clone_without_the_experiments_goes_on_from_it(project, tmp_path):
    from llama_pe.core.device import cpu_model
    from llama_pe.tracking.code_version import code_version

    root, env = project
    grid = ("--pos", "rope", "--seeds", "0", "--sweep", "train.lr=0.001,0.004", "--ledger", "reports/sweep.csv")
    done = study(root, env, *grid, "--select", "train.lr", "--out", "reports/sweep")
    assert done.returncode == 0, done.stdout + done.stderr
    ledger = Ledger.read(root / "reports/sweep.csv")
    head = run(["git", "rev-parse", "HEAD"], root, env).strip()
    assert sorted(row["train.lr"] for row in ledger.rows) == [0.001, 0.004]
    assert {(row["cpu"], row["device"], row["code"], row["commit"]) for row in ledger.rows} == {
        (cpu_model(), "cpu", code_version(root), head)
    }
    best = min(ledger.rows, key=lambda row: row["best_val_loss"])["train.lr"]
    assert pd.read_csv(root / "reports/sweep/selection.csv")["chosen"].tolist() == [best]
    assert set(pd.read_csv(root / "reports/sweep/runs.csv")["train.lr"]) == {best}

    # Another machine: a clone has the commits and the committed ledger, none of the experiments.
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(root), str(clone)], tmp_path, env)
    (clone / "reports").mkdir(exist_ok=True)  # it holds the committed ledger
    (clone / "reports/sweep.csv").write_bytes((root / "reports/sweep.csv").read_bytes())
    run(["git", "add", "reports/sweep.csv"], clone, env)
    run(["git", "commit", "-qm", "the ledger"], clone, env)
    assert run(["dvc", "exp", "list", "--all-commits", "--name-only"], clone, env).strip() == ""
    planned = study(clone, env, *grid, "--select", "train.lr", "--dry-run")
    assert planned.returncode == 0, planned.stderr
    assert "2 already have an experiment, 0 to queue" in planned.stderr and "in the ledger" in planned.stderr
    options = ["--ledger", "reports/sweep.csv", "--select", "train.lr", "--out", "again"]
    report = [sys.executable, "-m", "llama_pe.commands.cli", "report", *options]
    run(report, clone, env)
    assert pd.read_csv(clone / "again/selection.csv")["chosen"].tolist() == [best]


def test_a_study_writes_a_tracked_ledger_only_when_named(tmp_path, monkeypatch, caplog):
    from llama_pe.commands import study as study_module

    repo = committed_repo(tmp_path)
    (repo / "reports").mkdir()
    Ledger.read(repo / "reports/ledger.csv").append(
        [ledger_row(parse_grid("abs", "0", False, [], PARAMS)[0], "x", 5.0)]
    )
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "study"], cwd=repo, check=True)
    monkeypatch.chdir(repo)
    monkeypatch.setattr(study_module, "Experiments", NoExperiments)
    monkeypatch.setattr(study_module, "queue_point", lambda repo, point: pytest.fail("queued"))
    grid = dict(pos="rope", seeds="0", hf=False, sets=[], jobs=1, baseline=[])
    with pytest.raises(
        StudyError,
        match=r"^--out reports: its ledger\.csv is a committed study's record \(git tracks it\), and a study writes "
        r"its runs into its --out folder's ledger\.csv; give --out a new folder for a study of its own, or "
        r"--ledger reports/ledger\.csv to add these runs to that record$",
    ):
        study_module.study(repo, **grid, out_dir=Path("reports"))
    study_module.study(repo, **grid, out_dir=Path("reports"), dry_run=True)  # warns, and says what it would queue
    assert "--ledger reports/ledger.csv to add these runs" in caplog.text
    assert study_module.refuse_tracked_ledger(repo, Path("reports/mine/ledger.csv"), dry_run=False) is None  # untracked
