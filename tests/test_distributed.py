"""Data-parallel training under torchrun: 2 CPU processes (gloo) take the steps that 1 process takes."""

from __future__ import annotations

import copy
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT, base_params

pytestmark = pytest.mark.integration


def write_params(root: Path, nproc: int, **train) -> Path:
    params = copy.deepcopy(base_params())
    params["tokenizer"]["vocab_size"] = 400
    params["model"].update(size="tiny", dim=32, n_heads=4, n_kv_heads=2, dropout=0.0)
    defaults = dict(
        context=16,
        batch_size=8,
        max_steps=8,
        warmup_steps=2,
        eval_interval=4,
        device="cpu",
        precision="fp32",
        patience=None,
    )
    params["train"].update({**defaults, **train, "nproc": nproc})
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def train_command(root: Path, data_dirs: Path) -> list[str]:
    stage = [sys.executable, str(REPO_ROOT / "stages/train.py"), "--params", str(root / "params.yaml")]
    data = ["--encoded", str(data_dirs / "encoded"), "--tokenizer", str(data_dirs / "tokenizer")]
    models = ["--best", "models/best.pt", "--last", "models/last.pt"]
    return [*stage, *data, *models, "--metrics", "metrics/train.json", "--live", "plots/train"]


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}


def train_run(root: Path, data_dirs: Path, nproc: int, **train) -> tuple[dict, list[float], float, str]:
    """Train in root; its metrics, its training-loss curve, its wall time and its log."""
    root.mkdir(parents=True, exist_ok=True)
    write_params(root, nproc, **train)
    started = time.perf_counter()
    done = subprocess.run(train_command(root, data_dirs), cwd=root, env=environment(), capture_output=True, text=True)
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads((root / "metrics/train.json").read_text()), loss_curve(root), seconds, done.stderr


def loss_curve(root: Path) -> list[float]:
    with open(root / "plots/train/plots/metrics/train/loss.tsv", newline="") as f:
        return [float(row["loss"]) for row in csv.DictReader(f, delimiter="\t")]


def test_two_processes_take_the_steps_of_one_with_the_same_global_batch(tmp_path, data_dirs):
    one, one_curve, one_seconds, _ = train_run(tmp_path / "one", data_dirs, nproc=1)
    two, two_curve, two_seconds, log = train_run(tmp_path / "two", data_dirs, nproc=2)
    assert "torch.distributed.run --standalone --nproc-per-node=2" in log  # the stage relaunched itself
    print(f"1 process: {one_seconds:.1f} s, 2 processes (gloo): {two_seconds:.1f} s")  # shown with pytest -n 0 -s
    assert len(two_curve) == len(one_curve) == 8  # one writer: every step once
    assert two_curve == pytest.approx(one_curve, rel=1e-5, abs=1e-6)
    assert two["best_val_loss"] == pytest.approx(one["best_val_loss"], abs=1e-5)
    assert two["trained_tokens"] == one["trained_tokens"]  # tokens of the global batch, not of one rank's share


def _processes_running_in(directory: Path) -> list[int]:
    """Live processes whose working directory is `directory` (zombies, already dead, are left out)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            here = proc.name.isdigit() and (proc / "cwd").resolve() == directory.resolve()
            if here and (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_a_killed_two_process_run_resumes_to_the_same_metrics(tmp_path, data_dirs):
    budget = {"max_steps": 40}  # far past the first checkpoint (step 4): the kill lands mid-run on a busy machine too
    uninterrupted, curve, _, _ = train_run(tmp_path / "whole", data_dirs, nproc=2, **budget)
    root = tmp_path / "killed"
    root.mkdir()
    write_params(root, nproc=2, **budget)
    process = subprocess.Popen(
        train_command(root, data_dirs),
        cwd=root,
        env=environment(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not (root / "models/last.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # torchrun; its ranks, in sessions of their own, must die with it
    assert process.wait() == -signal.SIGKILL, "training finished before it could be killed"
    deadline = time.monotonic() + 10
    while _processes_running_in(root) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _processes_running_in(root), "a rank outlived torchrun"
    resumed, resumed_curve, _, log = train_run(root, data_dirs, nproc=2, **budget)
    step = re.search(r"resuming from models/last\.pt at step (\d+)", log)
    assert step and int(step.group(1)) < 40, log  # the ranks died with torchrun: they did not run on to the end
    timing = ("tokens_per_sec", "wall_time_s", "val_time_s")
    assert {k: v for k, v in resumed.items() if k not in timing} == {
        k: v for k, v in uninterrupted.items() if k not in timing
    }
    assert resumed_curve == curve


def test_a_world_size_that_does_not_divide_the_batch_stops_every_rank_with_the_reason(tmp_path, data_dirs):
    write_params(tmp_path, nproc=1)  # params allow one process; torchrun is asked for three by hand
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=3"]
    command = [*torchrun, *train_command(tmp_path, data_dirs)[1:]]
    done = subprocess.run(command, cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "train.batch_size: 8 windows cannot be split evenly between 3 processes" in done.stdout + done.stderr


def _rank_process(parent: int, rank: int) -> int | None:
    """The pid of torchrun's child with LOCAL_RANK=rank."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and f"LOCAL_RANK={rank}".encode() in environ:
            return int(proc.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process through /proc")
def test_one_failing_rank_stops_the_whole_run_instead_of_hanging(tmp_path, data_dirs):
    write_params(tmp_path, nproc=2, **{"max_steps": 5000, "eval_interval": 1000})
    process = subprocess.Popen(
        train_command(tmp_path, data_dirs),
        cwd=tmp_path,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        rank1 = None
        while rank1 is None and time.monotonic() < deadline:
            time.sleep(0.5)
            rank1 = _rank_process(process.pid, 1)
        assert rank1 is not None, "rank 1 never started"
        time.sleep(3)  # inside the training loop, waiting on rank 1 at every all-reduce
        os.kill(rank1, signal.SIGKILL)
        output, _ = process.communicate(timeout=120)  # a hang would end here, as a failure
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode != 0
    assert "local_rank: 1" in output or "rank: 1" in output, output[-2000:]


def test_ctrl_c_in_training_is_one_line_that_says_dvc_repro_resumes(tmp_path, data_dirs):
    write_params(tmp_path, 1, max_steps=100000, eval_interval=2)
    # As in a terminal: SIGINT handled. A shell runs background jobs with SIGINT ignored, and a child inherits that
    # (then Python installs no KeyboardInterrupt handler), so a test run from such a job must undo it.
    process = subprocess.Popen(
        train_command(tmp_path, data_dirs),
        cwd=tmp_path,
        env=environment(),
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "models/last.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)  # what Ctrl-C sends
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert stderr.rstrip().endswith(
        "ERROR llama_pe: interrupted; `dvc repro` resumes training from the last validation's checkpoint"
    )
