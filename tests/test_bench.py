"""`llama-pe bench` runs and records what it measured (a benchmark: the figures themselves are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def test_bench_measures_every_variant_and_writes_its_record(tmp_path):
    out = tmp_path / "bench.json"
    command = [sys.executable, "-m", "llama_pe.cli", "bench", "--size", "tiny", "--pos", "rope",
               "--dropout", "0,0.1", "--rounds", "1", "--steps", "1", "--warmup", "0", "--generate-tokens", "8",
               "--out", str(out)]  # fmt: skip
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


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [("rounds", 0, "--rounds: expected an integer of at least 1, got 0"),
     ("steps", 0, "--steps: expected an integer of at least 1, got 0"),
     ("warmup", -1, "--warmup: expected an integer of at least 0, got -1"),
     ("batch_size", 0, "--batch-size: expected an integer of at least 1, got 0"),
     ("generate_tokens", -5, "--generate-tokens: expected an integer of at least 0, got -5")],
)  # fmt: skip
def test_bad_counts_are_refused_before_anything_is_measured(setting, value, message):
    from llama_pe.bench import run_bench
    from llama_pe.errors import ConfigError

    settings = dict(size="tiny", encodings=["rope"], hf=False, dropouts=[0.0], context=16, batch_size=2, rounds=1,
                    steps=1, warmup=0, device_setting="cpu", precision_setting="fp32", generate_tokens=0,
                    params_file=REPO_ROOT / "params.yaml")  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        run_bench(**{**settings, setting: value})
