"""`llama-pe bench` runs and records what it measured (a benchmark: the figures themselves are not asserted)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
import torch

from llama_pe import bench
from llama_pe.cli import main
from llama_pe.config import SIZES
from llama_pe.encodings import ENCODINGS
from tests.conftest import REPO_ROOT

# What measures or builds: none of it may run before every option is checked.
EXPENSIVE = (
    "matmul_peak",
    "model_for",
    "train_seconds",
    "eval_seconds",
    "cpu_peak_memory_mb",
    "stream_tokens",
    "generate",
    "profile_training",
)


@pytest.mark.slow
def test_bench_measures_every_variant_and_writes_its_record(tmp_path):
    out = tmp_path / "bench.json"
    variants = ["--size", "tiny", "--pos", "rope", "--dropout", "0,0.1"]
    budget = ["--rounds", "1", "--steps", "1", "--warmup", "0", "--generate-tokens", "8"]
    command = [sys.executable, "-m", "llama_pe.cli", "bench", *variants, *budget, "--out", str(out)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    names = [(r["pos"], r["impl"], r["dropout"]) for r in results["rows"]]
    assert names == [("rope", "native", 0.0), ("rope", "native", 0.1), ("rope", "hf", 0.0), ("rope", "hf", 0.1)]
    for row in results["rows"]:
        assert row["train_tokens_per_sec"] > 0 and row["eval_tokens_per_sec"] > 0 and row["mfu"] > 0
        assert row["peak_memory_mb"] > 0
    assert results["rows"][2]["train_vs_hf"] == 1.0 and results["generation"]["tokens"] == 8
    assert set(results["dropout_cost"]) == {"rope native dropout 0.1", "rope hf dropout 0.1"}
    assert "| rope hf dropout 0 |" in done.stdout and results["machine"]["device"].startswith("cpu")


BAD_OPTIONS = [
    (["--size", "huge"], f"--size: unknown size 'huge'; valid sizes: {', '.join(SIZES)}"),
    (["--pos", "rope,ropee"], f"--pos: unknown position encoding 'ropee'; valid: {', '.join(ENCODINGS)}"),
    (["--pos", "rope,rope"], "--pos: rope is given twice; give each value once"),
    (["--dropout", "0,x"], "--dropout: expected numbers in [0, 1), comma-separated, e.g. 0,0.1; 'x' is not a number"),
    (["--dropout", "1"], "--dropout: expected numbers in [0, 1), got 1"),
    (["--dropout", "-0.1"], "--dropout: expected numbers in [0, 1), got -0.1"),
    (["--dropout", "nan"], "--dropout: expected numbers in [0, 1), got nan"),
    (["--dropout", "0.1,0.10"], "--dropout: 0.1 is given twice; give each value once"),
    *[([option, str(least - 1)], f"{option}: expected an integer of at least {least}, got {least - 1}")
      for option, least in bench.LEAST.items()],
    (["--device", "tpu"], "--device: expected one of auto, cpu, cuda, mps; got 'tpu'"),
    pytest.param(["--device", "cuda"], "--device: cuda was asked for, but PyTorch sees no CUDA GPU; use auto or cpu",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")),
    (["--precision", "fp8"], "--precision: expected one of auto, fp32, bf16, fp16; got 'fp8'"),
    (["--device", "cpu", "--precision", "fp16"],
     "--precision: fp16 needs a CUDA GPU (device is cpu); use bf16 or fp32"),
    (["--out", "{tmp}"], "--out: {tmp} is a folder; name a file in it, e.g. {tmp}/bench.json"),
    (["--out", "{tmp}/a-file/new/bench.json"],
     "--out: {tmp}/a-file/new/bench.json cannot be written: {tmp}/a-file is a file, not a folder"),
]  # fmt: skip


@pytest.fixture
def nothing_measured(monkeypatch):
    """Each function that measures or builds fails the test if it is called."""
    for name in EXPENSIVE:

        def refuse(*args, name=name, **kwargs):
            raise AssertionError(f"bench.{name} ran before every option was checked")

        monkeypatch.setattr(bench, name, refuse)


@pytest.mark.parametrize(("options", "message"), BAD_OPTIONS)
def test_a_bad_option_is_one_line_and_exit_1_before_anything_is_measured(
    options, message, nothing_measured, tmp_path, monkeypatch, caplog
):
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.chdir(REPO_ROOT)  # params.yaml
    argv = ["bench", "--out", str(tmp_path / "bench.json"), *[o.format(tmp=tmp_path) for o in options]]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [message.format(tmp=tmp_path)]


def test_every_phase_says_what_it_does_before_it_does_it(monkeypatch, caplog, capsys, tmp_path):
    """Each expensive call is preceded by the log line of its phase; the bars show on stderr."""
    calls = []

    def watch(name, function):
        def watched(*args, **kwargs):
            calls.append((name, [r for r in caplog.records if r.name.startswith("llama_pe")][-1].getMessage()))
            return function(*args, **kwargs)

        monkeypatch.setattr(bench, name, watched)

    watch("matmul_peak", lambda device, dtype: 1e9)  # the real one takes seconds; its caller logs
    watch("cpu_peak_memory_mb", lambda *args: 1.0)  # the real one spawns a process per variant
    for name in ("model_for", "train_seconds", "eval_seconds", "stream_tokens", "profile_training"):
        watch(name, getattr(bench, name))
    caplog.set_level(logging.INFO, logger="llama_pe")
    bench.bench(
        tmp_path / "bench.json",
        size="tiny",
        encodings=["rope"],
        hf=False,
        dropouts=[0.0],
        context=8,
        batch_size=2,
        rounds=2,
        steps=1,
        warmup=1,
        device_setting="cpu",
        precision_setting="fp32",
        generate_tokens=3,
        params_file=REPO_ROOT / "params.yaml",
        profile=True,
    )
    expected = {
        ("matmul_peak", "measuring the matmul peak on cpu"),
        ("model_for", "building the models, then --warmup 1 untimed steps of each"),
        ("train_seconds", "building the models"),  # the warm-up
        ("train_seconds", "round 1 of 2: timing training, --steps 1 of each variant"),
        ("eval_seconds", "round 1 of 2: timing evaluation"),
        ("train_seconds", "round 2 of 2: timing training"),
        ("eval_seconds", "round 2 of 2: timing evaluation"),
        ("cpu_peak_memory_mb", "peak memory: each variant in a process of its own"),
        ("stream_tokens", "generation: 3 tokens, greedy, with and without the KV cache"),
        ("profile_training", "profiling rope native dropout 0: 3 training steps"),
    }
    for name, line in expected:
        assert any(n == name and last.startswith(line) for n, last in calls), (name, line, calls)
    bars = capsys.readouterr().err
    for bar in ("build", "round 1/2 train", "round 2/2 eval", "memory", "generate"):
        assert f"{bar}: " in bars


def test_generation_without_native_rope_says_it_is_not_timed(monkeypatch, caplog):
    monkeypatch.setattr(bench, "stream_tokens", lambda *args, **kwargs: pytest.fail("generation was timed"))
    caplog.set_level(logging.INFO, logger="llama_pe")
    assert bench._generation({}, 8, torch.device("cpu")) == {}
    assert "generation: not timed, --pos names no rope" in caplog.text
