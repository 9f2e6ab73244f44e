"""The data stages under real DVC, in a temporary git repo with its own identity and a small corpus."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT, base_params, generate_corpus

pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A copy of the pipeline (dvc.yaml, stages, library sources) with params for a small generated corpus."""
    root = tmp_path_factory.mktemp("project")
    mirror = tmp_path_factory.mktemp("mirror")
    text = generate_corpus(n_speeches=600, seed=1)
    (mirror / "tinyshakespeare.txt").write_text(text, encoding="utf-8")
    for item in ("dvc.yaml", "stages", "src"):
        source = REPO_ROOT / item
        copy = shutil.copytree if source.is_dir() else shutil.copy
        copy(source, root / item)
    params = base_params()
    params["data"]["sha256"] = hashlib.sha256(text.encode()).hexdigest()
    params["data"]["url"] = (mirror / "not-here.txt").as_uri()  # the mirror must be what serves the file
    params["tokenizer"]["vocab_size"] = 400
    params["model"].update(size="tiny", dim=32, n_heads=4, n_kv_heads=2)
    params["eval"].update(stride=4, sample_tokens=10)
    params["train"].update(
        context=16, batch_size=8, max_steps=150, warmup_steps=5, eval_interval=10, device="cpu", patience=None
    )
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / ".gitignore").write_text("/data/\n/models/\n__pycache__/\n")
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "LLAMA_PE_MIRROR": str(mirror),
        "GIT_AUTHOR_NAME": "llama-pe tests",
        "GIT_AUTHOR_EMAIL": "tests@llama-pe.invalid",
        "GIT_COMMITTER_NAME": "llama-pe tests",
        "GIT_COMMITTER_EMAIL": "tests@llama-pe.invalid",
    }
    run(["git", "init", "-q"], root, env)
    run(["dvc", "init", "-q"], root, env)
    run(["dvc", "config", "core.analytics", "false"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "pipeline"], root, env)  # DVCLive and `dvc exp` need a commit
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
    assert "Stage 'encode' didn't change, skipping" in out and "Running stage 'train'" in out
    metrics = json.loads((root / "metrics/train.json").read_text())
    assert metrics["best_val_bpc"] < metrics["unigram_val_bpc"]
    table = run(["dvc", "exp", "show", "--csv"], root, env)
    header = table.splitlines()[0].split(",")
    assert {"best_val_loss", "best_val_bpc", "test_bpc", "ppl_at_4x", "model.pos", "train.seed"} <= set(header)
    diff = run(["dvc", "metrics", "diff", "HEAD", "alibi"], root, env)
    assert "metrics/train.json" in diff and "best_val_loss" in diff
    assert "metrics/eval.json" in diff and "test_bpc" in diff
    plots = json.loads(run(["dvc", "plots", "diff", "HEAD", "alibi", "--json"], root, env))
    assert not plots.get("errors")
    overlaid = plots["data"]["extrapolation"][0]["content"]["data"]["values"]
    assert {row["rev"] for row in overlaid} == {"HEAD", "alibi"}  # both experiments on the same axes
    run(["git", "checkout", "--", "."], root, env)
    run(["dvc", "checkout", "--force"], root, env)


def test_killed_training_resumes_under_dvc_repro_to_the_same_metrics(project):
    root, env = project
    run(["dvc", "repro"], root, env)
    uninterrupted = json.loads((root / "metrics/train.json").read_text())
    (root / "models/last.pt").unlink()
    # Forced rerun of train, killed (SIGKILL, the whole process group) once it has written a checkpoint.
    process = subprocess.Popen(
        ["dvc", "repro", "--force", "--single-item", "train"], cwd=root, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (root / "models/last.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "training finished before it could be killed"
    out = run(["dvc", "repro"], root, env)
    assert re.search(r"resuming from models/last\.pt at step (\d+)", out)
    resumed = json.loads((root / "metrics/train.json").read_text())
    timing = ("tokens_per_sec", "wall_time_s")
    assert {k: v for k, v in resumed.items() if k not in timing} == {
        k: v for k, v in uninterrupted.items() if k not in timing
    }


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
