"""The data stages under real DVC, in a temporary git repo with its own identity and a small corpus."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from llama_pe.positions.catalogue import ENCODINGS
from tests.conftest import base_params, generate_corpus, make_dvc_project, run, tiny_pipeline_params

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A copy of the pipeline with params for a small generated corpus and a tiny model."""
    root = tmp_path_factory.mktemp("project")
    params = tiny_pipeline_params(sample_tokens=10, max_steps=150, warmup_steps=5, eval_interval=10)
    env = make_dvc_project(root, tmp_path_factory.mktemp("mirror"), generate_corpus(n_speeches=600, seed=1), params)
    return root, env


def test_dvc_repro_runs_every_stage_then_is_a_no_op(project):
    root, env = project
    out = run(["dvc", "repro"], root, env)
    for stage in ("download", "tokenizer", "encode", "train", "evaluate", "plot"):
        assert f"Running stage '{stage}'" in out
    meta = json.loads((root / "data/encoded/meta.json").read_text())
    corpus_chars = len((root / "data/raw/tinyshakespeare.txt").read_text(encoding="utf-8"))
    assert sum(split["chars"] for split in meta["splits"].values()) == corpus_chars
    for name in ("train", "val", "test"):
        assert (root / f"data/encoded/{name}.bin").stat().st_size == 2 * meta["splits"][name]["tokens"]
    metrics = json.loads((root / "metrics/tokenizer.json").read_text())
    assert metrics["vocab_size"] == 400 and metrics["lossless"] is True
    assert "Data and pipelines are up to date" in run(["dvc", "repro"], root, env)

    dag = run(["dvc", "dag", "--dot"], root, env)
    assert '"download" -> "tokenizer"' in dag and '"tokenizer" -> "encode"' in dag and '"encode" -> "train"' in dag
    assert json.loads((root / "metrics/train.json").read_text())["trained_steps"] == 150
    evaluation = json.loads((root / "metrics/eval.json").read_text())
    assert {"test_ppl", "test_bpc", "holdout_bpc", "ppl_at_4x", "sliding_ppl_at_8x"} <= set(evaluation)
    for figure in ("training.png", "extrapolation.png"):
        assert (root / "plots/figures" / figure).read_bytes().startswith(b"\x89PNG")


def test_changing_vocab_size_reruns_tokenizer_and_encode_only(project):
    root, env = project
    run(["dvc", "repro"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "baseline"], root, env)
    out = run(["dvc", "exp", "run", "-S", "tokenizer.vocab_size=420"], root, env)
    assert "Stage 'download' didn't change, skipping" in out
    assert "Running stage 'tokenizer'" in out and "Running stage 'encode'" in out
    assert json.loads((root / "metrics/tokenizer.json").read_text())["vocab_size"] == 420
    run(["git", "checkout", "--", "."], root, env)  # back to the baseline workspace for the tests that follow
    run(["dvc", "checkout", "--force"], root, env)


def test_exp_run_with_another_encoding_writes_its_metrics(project):
    root, env = project
    out = run(["dvc", "exp", "run", "-n", "alibi", "-S", "model.pos=alibi"], root, env)
    for stage in ("download", "tokenizer", "encode"):  # the check stage runs, and its stamp keeps its hash
        assert f"Stage '{stage}' didn't change, skipping" in out
    for stage in ("train", "evaluate", "plot"):
        assert f"Running stage '{stage}'" in out
    metrics = json.loads((root / "metrics/train.json").read_text())
    assert metrics["best_val_bpc"] < metrics["unigram_val_bpc"]
    table = run(["dvc", "exp", "show", "--csv"], root, env)
    header = table.splitlines()[0].split(",")
    assert {"best_val_loss", "best_val_bpc", "test_bpc", "ppl_at_4x", "model.pos", "train.seed"} <= set(header)
    # The documented comparison, in a terminal of 120 columns: every default column, each experiment named.
    command = [sys.executable, "-m", "llama_pe.commands.cli", "show"]
    done = subprocess.run(command, cwd=root, env={**env, "COLUMNS": "120"}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    shown = done.stdout.splitlines()
    assert max(map(len, shown)) <= 120 and "left out" not in shown[-1]
    # The default columns, then each param in which these experiments differ (the project's own tiny vocabulary).
    assert shown[0].split()[:8] == ["experiment", "model.pos", "model.impl", "train.seed", "train.lr", "best_val_loss",
                                    "test_ppl", "ppl_at_8x"]  # fmt: skip
    assert all(
        column.startswith(("data.", "tokenizer.", "model.", "train.", "eval.")) for column in shown[0].split()[8:]
    )
    (alibi,) = [line.split() for line in shown if line.startswith("alibi ")]
    assert alibi[2:4] == ["alibi", "native"] and float(alibi[6]) == pytest.approx(metrics["best_val_loss"], abs=1e-4)
    diff = run(["dvc", "metrics", "diff", "HEAD", "alibi"], root, env)
    assert "metrics/train.json" in diff and "best_val_loss" in diff
    assert "metrics/eval.json" in diff and "test_bpc" in diff
    plots = json.loads(run(["dvc", "plots", "diff", "HEAD", "alibi", "--json"], root, env))
    assert not plots.get("errors")
    overlaid = plots["data"]["extrapolation"][0]["content"]["data"]["values"]
    assert {row["rev"] for row in overlaid} == {"HEAD", "alibi"}  # both experiments on the same axes
    run(["git", "checkout", "--", "."], root, env)
    run(["dvc", "checkout", "--force"], root, env)


def _generate(root: Path, env: dict[str, str], *source: str) -> subprocess.CompletedProcess:
    """`llama-pe generate` in root; with no source, from models/best.pt."""
    options = ["--prompt", "First", "--tokens", "12", "--temperature", "0"]
    command = [sys.executable, "-m", "llama_pe.commands.cli", "generate", *source, *options]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)


def test_generate_reads_an_experiments_checkpoint_from_dvc_cache(project):
    root, env = project
    if "alibi" not in run(["dvc", "exp", "list", "--name-only"], root, env).split():
        run(["dvc", "exp", "run", "-n", "alibi", "-S", "model.pos=alibi"], root, env)
    run(["git", "checkout", "--", "."], root, env)
    run(["dvc", "checkout", "--force"], root, env)
    from_exp = _generate(root, env, "--exp", "alibi")
    assert from_exp.returncode == 0, from_exp.stderr
    run(["dvc", "exp", "apply", "alibi"], root, env)
    run(["dvc", "checkout", "--force"], root, env)
    applied = _generate(root, env, "--checkpoint", "models/best.pt")
    run(["git", "checkout", "--", "."], root, env)
    run(["dvc", "checkout", "--force"], root, env)
    assert from_exp.stdout == applied.stdout and from_exp.stdout.startswith("First")
    assert len(from_exp.stdout) > len("First\n")
    missing = _generate(root, env, "--exp", "no-such-exp")
    assert missing.returncode == 1
    assert "--exp: no experiment or git revision named 'no-such-exp'" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_killed_training_resumes_under_dvc_repro_to_the_same_metrics(project):
    root, env = project
    run(["dvc", "repro"], root, env)
    uninterrupted = json.loads((root / "metrics/train.json").read_text())
    (root / "models/last.pt").unlink()
    # Forced rerun of train, killed (SIGKILL, the whole process group) once it has written a checkpoint.
    process = subprocess.Popen(
        ["dvc", "repro", "--force", "--single-item", "train"],
        cwd=root,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not (root / "models/last.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "training finished before it could be killed"
    out = run(["dvc", "repro"], root, env)
    assert re.search(r"resuming from models/last\.pt at step (\d+)", out)
    resumed = json.loads((root / "metrics/train.json").read_text())
    timing = ("tokens_per_sec", "wall_time_s", "val_time_s")
    assert {k: v for k, v in resumed.items() if k not in timing} == {
        k: v for k, v in uninterrupted.items() if k not in timing
    }


def test_the_documented_command_trains_again_from_scratch_and_reevaluates(project):
    root, env = project
    run(["dvc", "repro"], root, env)
    out = run(["dvc", "repro", "-f", "--downstream", "train"], root, env)
    assert "models/last.pt holds a finished run (step 150): training from scratch" in out
    for stage in ("train", "evaluate", "plot"):
        assert f"Running stage '{stage}'" in out
    for stage in ("download", "tokenizer", "encode"):
        assert f"Running stage '{stage}'" not in out
    assert "Data and pipelines are up to date" in run(["dvc", "status"], root, env)


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("model", "pos", "xpos", f"model.pos: unknown position encoding 'xpos'; valid: {', '.join(ENCODINGS)}"),
        ("model", "size", "huge", "model.size: unknown size 'huge'; valid sizes: tiny, small, base, seed33m"),
        ("model", "dim", 30, "model.dim: 30 is not divisible by model.n_heads=4"),
    ],
)
def test_a_fresh_repro_refuses_a_bad_model_setting_in_its_first_stage(tmp_path, section, key, value, message):
    params = base_params()
    params[section][key] = value
    params["model"]["size"] = params["model"]["size"] if key == "size" else "tiny"
    root = tmp_path / "fresh"
    root.mkdir()
    (tmp_path / "mirror").mkdir()
    env = make_dvc_project(root, tmp_path / "mirror", generate_corpus(n_speeches=50), params)
    result = subprocess.run(["dvc", "repro"], cwd=root, env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "Running stage 'check'" in result.stdout and "Running stage 'download'" not in result.stdout
    assert message in result.stderr + result.stdout and "Traceback" not in result.stderr
    assert not (root / "data").exists()


def test_bad_param_fails_the_stage_with_a_clear_message(project, tmp_path):
    root, env = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["split"] = "shuffled"
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(params))
    result = subprocess.run(
        [sys.executable, "stages/encode.py", "--params", str(bad), "--corpus", "x", "--tokenizer", "y", "--out", "z"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "data.split: expected one of contiguous, random_chunks; got 'shuffled'" in result.stderr


# A stage script run as DVC runs it, but killed with SIGKILL at its first rename into place: the moment after
# every byte of the output is written to its temporary and before it is committed.
_KILLED_AT_RENAME = """
import os, runpy, signal, sys
os.replace = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def stage_command(root: Path, stage: str) -> list[str]:
    """The stage's script and arguments from dvc.yaml, without the PYTHONPATH=src python in front."""
    cmd = yaml.safe_load((root / "dvc.yaml").read_text())["stages"][stage]["cmd"]
    words = shlex.split(cmd)
    return words[words.index("python") + 1 :]


@pytest.mark.parametrize(
    ("stage", "output"),
    [("download", "data/raw/tinyshakespeare.txt"), ("tokenizer", "data/tokenizer"), ("encode", "data/encoded")],
)
def test_a_data_stage_killed_mid_write_leaves_no_partial_output_and_repro_recovers(project, stage, output):
    root, env = project
    run(["dvc", "repro"], root, env)
    target = root / output
    before = tree_bytes(target)
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_AT_RENAME, *stage_command(root, stage)],
        cwd=root,
        env={**env, "PYTHONPATH": "src"},
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not target.exists()  # nothing half-written in place; the temporary beside it is removed by the next write
    run(["dvc", "repro"], root, env)  # DVC runs the stage again or checks its output out of the cache
    assert tree_bytes(target) == before
    assert "Data and pipelines are up to date" in run(["dvc", "status"], root, env)


def tree_bytes(path: Path) -> dict[str, bytes]:
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    return {str(f.relative_to(path.parent)): f.read_bytes() for f in files if f.is_file()}


def damaged_checkpoints(root: Path, tmp_path: Path) -> dict[str, Path]:
    import torch

    good = (root / "models/best.pt").read_bytes()
    damaged = {
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "text": b"not a checkpoint at all\n",
    }
    paths = {}
    for name, content in damaged.items():
        paths[name] = tmp_path / f"{name}.pt"
        paths[name].write_bytes(content)
    paths["foreign"] = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, paths["foreign"])
    return paths


def test_a_damaged_best_checkpoint_is_one_clear_line_in_evaluate_and_export(project, tmp_path):
    root, env = project
    run(["dvc", "repro"], root, env)
    for kind, checkpoint in damaged_checkpoints(root, tmp_path).items():
        args = stage_command(root, "evaluate")
        args[args.index("--checkpoint") + 1] = str(checkpoint)
        for cmd in ([sys.executable, *args], ["llama-pe", "export-hf", str(checkpoint), str(tmp_path / "hf")]):
            result = subprocess.run(cmd, cwd=root, env={**env, "PYTHONPATH": "src"}, capture_output=True, text=True)
            assert result.returncode == 1, (kind, cmd, result.stderr)
            assert "Traceback" not in result.stderr, result.stderr
            errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
            assert len(errors) == 1, result.stderr
            expected = {
                "foreign": "is not a llama-pe checkpoint",
                "empty": "is empty, not a checkpoint",
                "text": "is not a checkpoint (torch.save writes a zip archive",
                "truncated": "is not a readable checkpoint, truncated or damaged",
            }[kind]
            assert str(checkpoint) in errors[0] and expected in errors[0]
            # Not the pipeline's own output: no DVC command brings it back.
            assert errors[0].endswith("give a checkpoint that the `train` stage wrote (models/best.pt)")
        assert not (tmp_path / "hf").exists()


def _commit(root: Path, env: dict[str, str], message: str) -> None:
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", message, "--allow-empty"], root, env)


def _outputs(root: Path) -> dict[str, bytes]:
    return {**tree_bytes(root / "metrics"), **tree_bytes(root / "plots"), **tree_bytes(root / "models/best.pt")}


def test_a_refused_value_is_refused_before_dvc_removes_any_output(project):
    root, env = project
    run(["dvc", "repro"], root, env)
    _commit(root, env, "a trained model")
    before = _outputs(root)
    result = subprocess.run(
        ["dvc", "exp", "run", "-S", "model.n_heads=5"], cwd=root, env=env, capture_output=True, text=True
    )
    out = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in out
    assert "Running stage 'check'" in out and "Running stage 'train'" not in out
    assert "model.dim: 32 is not divisible by model.n_heads=5" in out
    # The refused value stays in params.yaml (DVC wrote it there): the error says so, and how to restore it.
    assert (
        "params.yaml now holds model.n_heads: 5 (committed: 4) as `dvc exp run -S` wrote it, and it stays there for "
        "the next run: `git checkout params.yaml` restores the committed file, or `-S model.n_heads=4` the "
        "committed value"
    ) in out
    assert {
        **tree_bytes(root / "metrics"),
        **tree_bytes(root / "plots"),
        **tree_bytes(root / "models/best.pt"),
    } == before
    run(["git", "checkout", "--", "params.yaml"], root, env)
    # A misspelt key that `+` added: the next run's error names it as not in the committed file.
    misspelt = subprocess.run(
        ["dvc", "exp", "run", "-S", "+model.poss=alibi"], cwd=root, env=env, capture_output=True, text=True
    )
    out = misspelt.stdout + misspelt.stderr
    assert misspelt.returncode != 0 and "Running stage 'train'" not in out
    assert "params.yaml now holds model.poss: alibi (not in the committed file)" in out
    assert "`git checkout params.yaml` restores the committed file" in out
    run(["git", "checkout", "--", "params.yaml"], root, env)
    # A value below 1e-4 as DVC writes it, `1e-05` (a number in YAML 1.2, with no dot), is taken as a number.
    run(["dvc", "exp", "run", "-S", "train.min_lr=1e-5", "check"], root, env)
    assert "min_lr: 1e-05" in (root / "params.yaml").read_text()
    run(["git", "checkout", "--", "params.yaml", "dvc.lock"], root, env)
    assert "Data and pipelines are up to date" in run(["dvc", "status"], root, env)


def test_params_changed_while_training_fail_the_stage_and_dvc_records_nothing(project):
    root, env = project
    run(["dvc", "repro"], root, env)
    lock, params = (root / "dvc.lock").read_text(), (root / "params.yaml").read_text()
    (root / "models/last.pt").unlink()
    process = subprocess.Popen(
        ["dvc", "repro", "--force", "--single-item", "train"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (root / "models/last.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "training finished before params.yaml could be changed"
    changed = yaml.safe_load(params)
    changed["model"]["pos"] = "alibi"  # what a `dvc exp run -S model.pos=alibi` started meanwhile writes
    (root / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    out, _ = process.communicate(timeout=300)
    assert process.returncode != 0
    assert "params changed while the `train` stage ran (model.pos: 'rope' -> 'alibi')" in out
    assert (root / "dvc.lock").read_text() == lock  # nothing recorded: no `pos: alibi` beside a rope model
    assert "Data and pipelines are up to date" not in run(["dvc", "status"], root, env)
    (root / "params.yaml").write_text(params)
    run(["dvc", "repro"], root, env)
    assert "Data and pipelines are up to date" in run(["dvc", "status"], root, env)


def _advised(stderr: str) -> list[str]:
    """The DVC command that the one error line suggests, as words to run."""
    errors = [line for line in stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    commands = re.findall(r"`(dvc [^`]+)`", errors[0])
    assert len(commands) == 1, errors[0]
    return shlex.split(commands[0])


def test_a_damaged_model_gets_advice_that_restores_it_from_the_cache(project):
    root, env = project
    run(["dvc", "repro"], root, env)
    best = root / "models/best.pt"
    good = best.read_bytes()
    best.write_bytes(good[: len(good) // 2])
    damaged = _generate(root, env)
    assert damaged.returncode == 1
    advice = _advised(damaged.stderr)
    assert advice == ["dvc", "checkout", "--force", "models/best.pt"]
    # and why not the user's usual command: it would train again
    assert "(in seconds; a plain dvc repro would instead run the train stage again to make it anew)" in damaged.stderr
    run(advice, root, env)
    assert best.read_bytes() == good
    assert "Data and pipelines are up to date" in run(["dvc", "status"], root, env)


def test_in_a_fresh_clone_the_advice_is_to_train_and_it_works(project, tmp_path):
    root, env = project
    run(["dvc", "repro"], root, env)
    _commit(root, env, "a trained model")
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(root), str(clone)], tmp_path, env)

    from_head = _generate(clone, env, "--exp", "HEAD")
    assert from_head.returncode == 1
    assert (
        "is not in this repository's DVC cache (a fresh clone's cache is empty); `dvc repro` trains it into "
        "models/best.pt, then give --checkpoint models/best.pt" in from_head.stderr
    )

    (clone / "models").mkdir()
    (clone / "models/best.pt").write_bytes(b"PK\x03\x04 damaged")
    damaged = _generate(clone, env)
    assert damaged.returncode == 1
    advice = _advised(damaged.stderr)
    assert advice == ["dvc", "repro", "train"]
    run(advice, clone, env)
    assert _generate(clone, env, "--checkpoint", "models/best.pt").returncode == 0
    run(["dvc", "repro"], clone, env)  # what the --exp HEAD message advises
    same = _generate(clone, env, "--exp", "HEAD")  # the same code, params and data make the same bytes
    assert same.returncode == 0, same.stderr


def test_editing_the_model_code_trains_again_under_dvc_repro(project):
    # Last in this module: it leaves the project's model code edited.
    root, env = project
    run(["dvc", "repro"], root, env)
    before = (root / "models/best.pt").read_bytes()
    args = root / "src/llama_pe/core/model/args.py"
    args.write_text(args.read_text().replace("init_std: float = 0.02", "init_std: float = 0.03"))
    out = run(["dvc", "repro"], root, env)
    assert "Running stage 'train'" in out
    assert "was made by other code (changed since: llama_pe/core/model/args.py): training from scratch" in out
    assert "resuming" not in out
    assert (root / "models/best.pt").read_bytes() != before
    assert json.loads((root / "metrics/train.json").read_text())["trained_steps"] == 150
