"""The ledger: rows only ever added, never half-written, read back as written; a damaged one is one clear error naming
its line; the code version that tells which code made a row; `llama-pe report --ledger` with no DVC experiment."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from llama_pe.analysis.ledger import Ledger, LedgerError, experiment_row, flat_params, read_cell, render
from llama_pe.tracking.code_version import code_version

DATE = "2025-01-02T03:04:05+00:00"


def row(name: str, pos: str, seed: int, loss: float, code: str = "c0dec0dec0de", **changes) -> dict:
    """A finished experiment as experiment_row makes it: provenance, every param flat, the metrics."""
    return {
        "experiment": name,
        "rev": hashlib.sha1(name.encode()).hexdigest(),
        "commit": "a" * 40,
        "date": DATE,
        "code": code,
        "cpu": "AMD EPYC 7B13",
        "device": "cpu",
        "accelerator": None,
        "model.impl": "native",
        "model.pos": pos,
        "model.dim": None,
        "train.seed": seed,
        "train.lr": 0.002,
        "train.context": 64,
        "eval.contexts": [0.5, 1, 2],
        "eval.sample_prompts": ["ROMEO:\n", "a, b"],
        "best_val_loss": loss,
        "test_ppl": math.exp(loss + 0.5),
        "holdout_bpc": loss / 2,
        "ppl_at_1x": math.exp(loss),
        "ppl_at_2x": None,
        "tokens_per_sec": 100.0 + seed,
        "params": 1000,
        **changes,
    }


ROWS = [
    row(f"{pos}{seed}", pos, seed, loss)
    for pos, losses in (("rope", [5.0, 5.2, 5.1]), ("alibi", [4.8, 5.1, 4.95]))
    for seed, loss in enumerate(losses)
]


def written(path: Path, rows: list[dict]) -> Ledger:
    ledger = Ledger.read(path)
    ledger.append(rows)
    return ledger


# ---------------------------------------------------------------------------------------------- cells and rows


@pytest.mark.parametrize(
    "value",
    [
        "rope",
        "1.0",
        "true",
        "null",
        "",
        " padded",
        "[not a list",
        '"quoted"',
        "ROMEO:\n",
        "nan",
        400,
        0.002,
        1e-05,
        1.0,
        True,
        False,
        None,
        [0.5, 1, 2],
        ["ROMEO:\n", "First Citizen:\nWe are"],
        [],
    ],
)
def test_a_cell_reads_back_as_the_value_written(value):
    back = read_cell(render(value))
    assert (back == value and type(back) is type(value)) or (value == "" and back is None)  # "": no param value


def test_rows_are_appended_and_read_back_with_their_values(tmp_path):
    path = tmp_path / "ledger.csv"
    written(path, ROWS[:2])
    before = path.read_bytes()
    ledger = written(path, ROWS[2:])
    assert path.read_bytes().startswith(before)  # the rows already there, byte for byte
    assert ledger.rows == Ledger.read(path).rows
    assert Ledger.read(path).rows == [{**r, "params": float(r["params"])} for r in ROWS]  # a metric is a float
    frame = ledger.frame()
    assert list(frame["name"]) == [r["experiment"] for r in ROWS] and frame["best_val_loss"].dtype == float
    assert frame["ppl_at_2x"].isna().all() and frame["eval.contexts"].iloc[0] == [0.5, 1, 2]


def test_a_new_column_widens_the_header_and_changes_no_value_written(tmp_path):
    path = tmp_path / "ledger.csv"
    old = written(path, ROWS[:2]).rows
    ledger = written(path, [row("rope9", "rope", 9, 5.3, **{"ppl_at_16x": 400.0, "train.pos_lr_scale": 10.0})])
    assert ledger.columns[-2:] == ["ppl_at_16x", "train.pos_lr_scale"]
    assert ledger.rows[:2] == [{**r, "ppl_at_16x": None, "train.pos_lr_scale": None} for r in old]
    assert ledger.rows[2]["ppl_at_16x"] == 400.0


def test_an_interrupted_append_leaves_the_ledger_as_it_was(tmp_path, monkeypatch):
    import llama_pe.io

    path = tmp_path / "ledger.csv"
    written(path, ROWS[:3])
    before = path.read_bytes()

    def killed(*args):
        raise KeyboardInterrupt  # Ctrl-C between writing the copy and renaming it

    monkeypatch.setattr(llama_pe.io.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        Ledger.read(path).append(ROWS[3:])
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["ledger.csv"]


def test_a_point_is_held_by_its_params_and_code(tmp_path):
    ledger = written(tmp_path / "ledger.csv", ROWS)
    params = {k: v for k, v in ROWS[1].items() if k.startswith(("model.", "train.", "eval."))}
    assert ledger.holds(params, "c0dec0dec0de")["experiment"] == "rope1"
    assert ledger.holds({**params, "train.lr": 2e-3, "train.seed": 1.0}, "c0dec0dec0de") is not None  # 1 == 1.0
    assert ledger.holds(params, "0ther0c0de00") is None  # other code: not the same point
    assert ledger.holds({**params, "train.lr": 0.001}, "c0dec0dec0de") is None
    assert ledger.holds({**params, "model.dim": 64}, "c0dec0dec0de") is None


def test_one_point_twice_is_one_run_when_its_results_agree(tmp_path):
    again = {**ROWS[0], "experiment": "rope0-again", "rev": "b" * 40, "tokens_per_sec": 999.0}  # only a timing
    ledger = written(tmp_path / "ledger.csv", [*ROWS, again])
    assert len(ledger.rows) == 7 and list(ledger.frame()["name"]).count("rope0") == 1 and len(ledger.frame()) == 6


def test_an_append_that_would_damage_the_ledger_is_refused_before_writing(tmp_path):
    path = tmp_path / "ledger.csv"
    written(path, ROWS)
    before = path.read_bytes()
    other = {**ROWS[0], "experiment": "rope0-other", "rev": "b" * 40, "best_val_loss": 5.01}
    with pytest.raises(
        LedgerError,
        match=r"ledger\.csv, a new row: the same point as line 2 \(code c0dec0dec0de, "
        r"the same params\) with other results \(best_val_loss 5\.01 here, 5\.0 there\)",
    ):
        Ledger.read(path).append([other])
    with pytest.raises(LedgerError, match=r"a new row, column date: 'yesterday' is not an ISO 8601 date"):
        Ledger.read(path).append([{**ROWS[0], "rev": "c" * 40, "date": "yesterday"}])
    assert path.read_bytes() == before


# ---------------------------------------------------------------------------------------------- damage


def damaged(tmp_path: Path, edit) -> Path:
    path = tmp_path / "ledger.csv"
    written(path, ROWS)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(edit(lines)))
    return path


def replace_cell(lines: list[str], line: int, old: str, new: str) -> list[str]:
    lines[line - 1] = lines[line - 1].replace(old, new, 1)
    return lines


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda ls: [ls[0].replace(",code,", ",")] + [line.replace(",c0dec0dec0de,", ",") for line in ls[1:]],
         r"ledger\.csv line 1 \(the header\): no column code; a ledger has experiment, rev, commit, date, code"),
        (lambda ls: [ls[0].replace("holdout_bpc", "holdout_bcp"), *ls[1:]],
         r"line 1 \(the header\): column holdout_bcp is neither a provenance column .* nor a metric the report reads"),
        (lambda ls: replace_cell(ls, 3, ",AMD EPYC 7B13,", ","),
         r"ledger\.csv line 3: \d+ fields where the header has \d+ \(a cell missing, or a comma too many"),
        (lambda ls: replace_cell(ls, 4, "5.1,", "5.1x,"),
         r"ledger\.csv line 4, column best_val_loss: '5\.1x' is not a finite number \(nor null\)"),
        (lambda ls: replace_cell(ls, 2, '"[0.5, 1, 2]"', '"[0.5, 1, 2"'),
         r"ledger\.csv line 2, column eval\.contexts: '\[0\.5, 1, 2' is not a value a ledger holds"),
        (lambda ls: replace_cell(ls, 5, DATE, "02/01/2025"),
         r"ledger\.csv line 5, column date: '02/01/2025' is not an ISO 8601 date"),
        (lambda ls: replace_cell(ls, 6, ",AMD EPYC 7B13,", ",,"), r"ledger\.csv line 6: cpu is empty; every row"),
        (lambda ls: replace_cell(ls, 2, ",a" + "a" * 39 + ",", ",HEAD,"),
         r"ledger\.csv line 2, column commit: 'HEAD' is not a git revision \(7 to 40 hex digits\)"),
        (lambda ls: [*ls, ls[1].replace(hashlib.sha1(b"rope0").hexdigest(), "b" * 40).replace(",5.0,", ",5.5,")],
         r"ledger\.csv line 8: the same point as line 2 \(code c0dec0dec0de, the same params\) with other results "
         r"\(best_val_loss 5\.5 here, 5\.0 there"),
    ],
)  # fmt: skip
def test_a_damaged_ledger_is_one_error_naming_its_line_and_the_problem(tmp_path, edit, message):
    path = damaged(tmp_path, edit)
    with pytest.raises(LedgerError, match=message):
        Ledger.read(path)


def test_a_missing_ledger_is_an_empty_one_unless_a_report_asks_for_it(tmp_path):
    assert Ledger.read(tmp_path / "absent.csv").rows == []
    with pytest.raises(LedgerError, match=r"--ledger \S+absent\.csv: no such file; `llama-pe study` writes one"):
        Ledger.read(tmp_path / "absent.csv", must_exist=True)


# ---------------------------------------------------------------------------------------------- code and experiments

DVC_YAML = """\
stages:
  train:
    cmd: python stages/train.py
    deps: [stages/train.py, src/lib]
    params: [train]
    outs: [models/best.pt]
    metrics: [{metrics/train.json: {cache: false}}]
  evaluate:
    cmd: python stages/evaluate.py
    deps: [stages/evaluate.py, models/best.pt]
    metrics: [{metrics/eval.json: {cache: false}}]
"""


def git(repo: Path, *args: str) -> str:
    identity = ["-c", "user.name=test", "-c", "user.email=test@example.com"]
    return subprocess.run(["git", *identity, *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def project(root: Path) -> Path:
    """A git repo with a two-stage dvc.yaml, its source files, params.yaml and a README; one commit."""
    git(root, "init", "-q")
    files = {
        "dvc.yaml": DVC_YAML,
        "stages/train.py": "import llama_pe.model\n\nllama_pe.model.train()\n",
        "stages/evaluate.py": "evaluate = 1\n",
        "src/llama_pe/__init__.py": "",
        "src/llama_pe/model.py": "def train():\n    return 1\n",
        "params.yaml": "train:\n  seed: 0\n  lr: 0.002\n",
        "README.md": "read me\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "baseline")
    return root


def test_the_code_version_changes_with_the_stages_and_the_code_they_run_only(tmp_path):
    repo = project(tmp_path)
    committed = code_version(repo, "HEAD")
    assert code_version(repo) == committed and len(committed) == 12
    for name, text in (("README.md", "other\n"), ("params.yaml", "train:\n  seed: 1\n  lr: 0.1\n")):
        (repo / name).write_text(text)
    (repo / "src/llama_pe/helper.py").write_text("def train():\n    return 2\n")
    assert code_version(repo) == committed  # no stage runs helper.py
    (repo / "src/llama_pe/model.py").write_text("from llama_pe.helper import train\n")
    git(repo, "add", "src/llama_pe/helper.py")  # staged: DVC copies it into the experiment
    changed = code_version(repo)
    assert changed != committed
    git(repo, "commit", "-qam", "changed")
    assert code_version(repo, "HEAD") == changed  # the workspace's version is what its commit records
    (repo / "dvc.yaml").write_text(DVC_YAML.replace("python stages/train.py", "python -O stages/train.py"))
    assert code_version(repo) != changed


def test_an_experiment_commit_becomes_a_row_with_its_provenance_params_and_metrics(tmp_path):
    repo = project(tmp_path)
    baseline = git(repo, "rev-parse", "HEAD").strip()
    (repo / "metrics").mkdir()
    train = {
        "best_val_loss": 5.1,
        "trained_steps": 6,
        "best_step": 6,
        "device": "cpu",
        "precision": "fp32",
        "cpu": "AMD EPYC 7B13",
        "accelerator": None,
    }
    (repo / "metrics/train.json").write_text(json.dumps(train))
    (repo / "metrics/eval.json").write_text(json.dumps({"test_ppl": 290.5, "ppl_at_8x": None}))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "an experiment")  # as DVC commits one: a child of its baseline
    rev = git(repo, "rev-parse", "HEAD").strip()
    made = experiment_row(repo, rev[:7], "exp-one")
    assert {k: made[k] for k in ("experiment", "rev", "commit", "code", "cpu", "device", "accelerator")} == {
        "experiment": "exp-one",
        "rev": rev,
        "commit": baseline,
        "code": code_version(repo, rev),
        "cpu": "AMD EPYC 7B13",
        "device": "cpu",
        "accelerator": None,
    }
    assert made["date"] == git(repo, "log", "-1", "--format=%cI").strip()
    assert made["train.lr"] == 0.002 and made["best_val_loss"] == 5.1 and made["test_ppl"] == 290.5
    assert "best_step" not in made and "precision" not in made  # unreported metrics stay out
    assert flat_params({"train": {"seed": 0, "lr": 0.002}}) == {"train.seed": 0, "train.lr": 0.002}


def test_an_experiment_without_a_recorded_machine_is_refused(tmp_path):
    repo = project(tmp_path)
    (repo / "metrics").mkdir()
    (repo / "metrics/train.json").write_text(json.dumps({"best_val_loss": 5.1, "device": "cpu"}))
    (repo / "metrics/eval.json").write_text("{}")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "older code")
    with pytest.raises(LedgerError, match=r"exp-old \([0-9a-f]{7}\): its metrics record no machine \(cpu, device\)"):
        experiment_row(repo, "HEAD", "exp-old")


# ---------------------------------------------------------------------------------------------- report --ledger


def test_report_from_a_ledger_reads_no_dvc_experiment(tmp_path, monkeypatch):
    from llama_pe.analysis import report as report_module

    def no_dvc(*args):
        raise AssertionError("a report from a ledger read DVC")

    monkeypatch.setattr(report_module, "read_experiments", no_dvc)
    monkeypatch.setattr(report_module, "read_val_curves", no_dvc)
    ledger = tmp_path / "ledger.csv"
    written(ledger, ROWS)
    report_module.report(tmp_path, tmp_path / "out", False, [], [], ledger=ledger)
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert sorted(runs["name"]) == sorted(r["experiment"] for r in ROWS)
    assert set(runs["cpu"]) == {"AMD EPYC 7B13"} and not (tmp_path / "out" / "val_curves.png").exists()
    comparison = (tmp_path / "out" / "comparison.md").read_text()
    assert "| model.pos=alibi |" in comparison and "**Machines:** AMD EPYC 7B13" in comparison
    with pytest.raises(LedgerError, match="no such file"):
        report_module.report(tmp_path, tmp_path / "out2", False, [], [], ledger=tmp_path / "absent.csv")


def test_runs_of_two_code_versions_are_grouped_apart_never_pooled(tmp_path):
    newer = [
        row(f"{r['experiment']}-new", r["model.pos"], r["train.seed"], r["best_val_loss"] - 1, code="0ther0c0de00")
        for r in ROWS
    ]
    ledger = written(tmp_path / "ledger.csv", [*ROWS, *newer])
    from llama_pe.analysis.grouping import group_keys, summarize

    frame = ledger.frame()
    assert group_keys(frame) == ["model.pos", "code"]
    summary = summarize(frame, group_keys(frame)).set_index(["group", "metric"])
    assert summary.loc[("model.pos=rope, code=c0dec0dec0de", "best_val_loss"), "mean"] == pytest.approx(5.1)
    assert summary.loc[("model.pos=rope, code=0ther0c0de00", "best_val_loss"), "mean"] == pytest.approx(4.1)
    assert set(summary["n"]) == {3, 0}  # three seeds a group, never six


def test_runs_of_two_machine_identities_are_other_groups_and_older_rows_read_without_the_new_columns(tmp_path):
    from llama_pe.analysis.experiments import MACHINE, machine_label
    from llama_pe.analysis.grouping import group_keys, iter_groups

    older = written(tmp_path / "ledger.csv", ROWS)  # rows of older code: the CPU's model name alone
    assert "cpu_signature" not in older.columns
    family_26 = dict(cpu="AMD EPYC", cpu_signature="AuthenticAMD family 26 model 2 stepping 1", cpu_isa="AVX512")
    newer = [
        row(f"new-{r['experiment']}", r["model.pos"], r["train.seed"], r["best_val_loss"] + 0.01, **family_26)
        for r in ROWS
    ]
    ledger = written(tmp_path / "ledger.csv", [{**r, "cpu_threads": 2} for r in newer])
    assert ledger.rows[0]["cpu_signature"] is None and ledger.rows[-1]["cpu_threads"] == "2"
    frame = ledger.frame()
    assert set(frame[MACHINE]) == {
        "AMD EPYC 7B13, cpu",
        "AMD EPYC, AuthenticAMD family 26 model 2 stepping 1, AVX512, 2 threads, cpu",
    }
    keys = group_keys(frame)
    assert MACHINE in keys  # the same params on two machines: two groups, never pooled or paired
    groups = [(group["model.pos"].iloc[0], len(group)) for _, group in iter_groups(frame, keys)]
    assert sorted(groups) == [("alibi", 3), ("alibi", 3), ("rope", 3), ("rope", 3)]
    assert MACHINE not in group_keys(frame[frame[MACHINE] == "AMD EPYC 7B13, cpu"])  # one machine: no such key
    # Rows read back from one ledger and added to another keep their identity, to the letter.
    copy = written(tmp_path / "copy.csv", ledger.rows)
    assert [machine_label(r) for r in copy.rows] == [machine_label(r) for r in ledger.rows]
    assert copy.rows[-1]["cpu_threads"] == "2"
