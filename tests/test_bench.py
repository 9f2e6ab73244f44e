"""`llama-pe bench` runs and records what it measured (a benchmark: the figures themselves are not asserted)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
import torch

from llama_pe.commands import bench, bench_measure, bench_results
from llama_pe.commands.cli import main
from llama_pe.positions.catalogue import ENCODINGS
from llama_pe.settings.architecture import SIZES
from tests.conftest import REPO_ROOT, committed_path

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


@pytest.mark.integration
def test_bench_measures_every_variant_and_writes_its_record(tmp_path):
    out = tmp_path / "bench.json"
    variants = ["--size", "tiny", "--pos", "rope", "--dropout", "0,0.1"]
    budget = ["--rounds", "1", "--steps", "1", "--warmup", "0", "--generate-tokens", "8"]
    command = [sys.executable, "-m", "llama_pe.commands.cli", "bench", *variants, *budget, "--out", str(out)]
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
        params_file=committed_path("params.yaml"),
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


# A figure against its spread across rounds: (figure, its per-round values, its null, the verdict).
JUDGED = {
    "1.05x over rounds 0.9 to 1.2": (1.05, [0.9, 1.05, 1.2], 1.0, "noise"),
    "1.21x over rounds 1.19 to 1.24": (1.21, [1.19, 1.21, 1.24], 1.0, "holds"),
    "0.80x over rounds 0.78 to 0.83": (0.80, [0.78, 0.80, 0.83], 1.0, "holds"),
    "a cost of 2% over rounds -5% to 6%": (0.02, [-0.05, 0.02, 0.06], 0.0, "noise"),
    "a cost of 14.8% over rounds 14% to 16%": (0.148, [0.14, 0.148, 0.16], 0.0, "holds"),
    "a cost of -30% over rounds -35% to -25%": (-0.30, [-0.35, -0.30, -0.25], 0.0, "holds"),
    "two rounds 1.1 apart about 1.5x": (1.5, [1.0, 2.1], 1.0, "noise"),
}


@pytest.mark.parametrize(("value", "per_round", "null", "verdict"), JUDGED.values(), ids=JUDGED)
def test_a_figure_is_noise_where_its_spread_across_rounds_exceeds_its_distance_from_its_null(
    value, per_round, null, verdict
):
    judged = bench_results.judge(value, per_round, null)
    assert judged["verdict"] == verdict
    assert judged["spread"] == pytest.approx(max(per_round) - min(per_round))
    assert judged["per_round"] == per_round


def test_one_round_measures_no_spread_so_its_figure_is_unverified():
    assert bench_results.judge(-5.599, [-5.599], null=0.0) == {
        "per_round": [-5.599],
        "spread": None,
        "verdict": "unmeasured",
    }


def test_drift_that_a_round_shares_cancels_in_its_ratio():
    """Each variant's own speed moves by half across the rounds; their ratio, taken round by round, does not."""
    ratio, judged = bench_results.versus([110.0, 165.0, 220.0], [100.0, 150.0, 200.0])
    assert ratio == pytest.approx(1.1) and judged["spread"] == pytest.approx(0.0) and judged["verdict"] == "holds"
    ratio, judged = bench_results.versus([110.0, 150.0, 200.0], [100.0, 150.0, 220.0])  # 1.1, 1.0, 0.91: noise
    assert ratio == pytest.approx(1.0) and judged["verdict"] == "noise"


def test_a_row_against_itself_is_one_by_definition_even_in_one_round():
    speeds = [123.0]
    assert bench_results.versus(speeds, speeds) == (1.0, {"per_round": [1.0], "spread": 0.0, "verdict": "itself"})
    assert bench_results.versus(speeds, [123.0])[1]["verdict"] == "unmeasured"  # another variant at the same speed


def synthetic_results(train: dict[str, list[float]]) -> dict:
    """bench's results from made-up per-round training speeds ("pos dropout": tokens/s per round), nothing timed."""
    figures = {}
    for name, speeds in train.items():
        pos, dropout = name.split()
        figures[bench_measure.Variant("native", pos, float(dropout))] = bench_measure.Figures(
            train_tokens_per_sec=speeds, eval_tokens_per_sec=speeds, peak_memory_mb=100.0, flops_per_token=1e6, params=1
        )
    settings = {"rounds": len(next(iter(train.values())))}
    return bench_results._results(list(figures), figures, 1e12, torch.device("cpu"), "fp32", {}, settings)


def cells(text: str, variant: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {variant} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


VS_ROPE = 4  # the column of cells()


def test_the_table_marks_each_figure_within_its_spread_and_explains_the_mark():
    results = synthetic_results(
        {
            "rope 0": [100.0, 100.0, 100.0],
            "alibi 0": [120.0, 121.0, 122.0],  # 1.21x, rounds 1.20 to 1.22: holds
            "nope 0": [90.0, 105.0, 120.0],  # 1.05x, rounds 0.90 to 1.20: noise
            "rope 0.1": [85.0, 86.0, 84.0],  # costs 15%, rounds 14% to 16%: holds
            "nope 0.1": [88.0, 104.0, 120.0],  # costs 1.0% of nope 0, rounds 0% to 2.2%: noise
        }
    )
    text = bench_results.table(results)
    assert cells(text, "rope native dropout 0")[VS_ROPE] == "1.00×"
    assert cells(text, "alibi native dropout 0")[VS_ROPE] == "1.21×"
    assert cells(text, "nope native dropout 0")[VS_ROPE] == "1.05×~"
    assert "rope native dropout 0.1: 15.0%, nope native dropout 0.1: 1.0%~" in text
    legend = [line for line in text.splitlines() if line.startswith(("~:", "?:"))]
    assert len(legend) == 1 and legend[0].startswith("~: noise: this figure's spread across rounds")
    assert "more --rounds or --steps" in legend[0]
    nope = results["rows"][2]["train_vs_rope_spread"]
    assert nope["verdict"] == "noise" and nope["spread"] == pytest.approx(0.3)
    assert results["dropout_cost_spread"]["nope native dropout 0.1"]["verdict"] == "noise"
    assert results["dropout_cost_spread"]["rope native dropout 0.1"]["spread"] == pytest.approx(0.02)
    assert bench.rounds_warning(3) is None


def test_one_round_marks_every_measured_figure_unverified_as_its_warning_says():
    """The issue's run: one round, dropout 0.1 timed 6.6 times faster than dropout 0."""
    results = synthetic_results({"rope 0": [100.0], "alibi 0": [107.0], "rope 0.1": [660.0]})
    text = bench_results.table(results)
    assert cells(text, "rope native dropout 0")[VS_ROPE] == "1.00×"  # itself: nothing to verify
    assert cells(text, "alibi native dropout 0")[VS_ROPE] == "1.07×?"
    assert "rope native dropout 0.1: -560.0%?" in text
    legend = [line for line in text.splitlines() if line.startswith(("~:", "?:"))]
    assert legend == ["?: unverified: one round measures no spread; use --rounds 3 or more"]
    assert results["dropout_cost_spread"]["rope native dropout 0.1"] == {
        "per_round": [pytest.approx(-5.6)],
        "spread": None,
        "verdict": "unmeasured",
    }
    assert "every ratio and cost is marked ?" in bench.rounds_warning(1)
