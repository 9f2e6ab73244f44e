import contextlib
import json
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llama_pe.core.data.batches import BatchSampler, eval_windows
from llama_pe.core.data.tokens import load_splits
from llama_pe.core.evaluate import Score, evaluate_checkpoint, metric_suffix, split_plan, total_loss, window_plan
from llama_pe.core.plotting import extrapolation_figure, training_figure
from llama_pe.core.train import train
from llama_pe.errors import DataError, MissingInputError
from llama_pe.figures import plain_log_y
from llama_pe.positions.rope_scaling import ROPE_SCALING_METHODS
from llama_pe.settings.config import ConfigError
from tests.conftest import make_config, make_data_dirs
from tests.model.conftest import tiny_model
from tests.test_train import TINY_MODEL, TINY_TRAIN, paths_in, tiny_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def scored_targets(plan) -> list[int]:
    """Target indices (1-based positions in the token stream) that the plan scores."""
    return [t for w in plan for t in range(w.end - w.scored + 1, w.end + 1)]


@pytest.mark.parametrize("n_tokens", [2, 10, 33, 100, 257])
@pytest.mark.parametrize(("context", "stride"), [(8, None), (8, 8), (8, 3), (32, 1), (5, 5), (64, 16)])
def test_every_target_is_scored_exactly_once(n_tokens, context, stride):
    plan = window_plan(n_tokens, context, stride)
    assert scored_targets(plan) == list(range(1, n_tokens))
    assert all(0 < w.end - w.start <= context and w.scored <= w.end - w.start for w in plan)


def test_sliding_windows_give_each_scored_token_the_context_minus_stride():
    plan = window_plan(100, context=16, stride=4)
    for window in plan[1:]:
        assert window.end - window.start == 16 and window.scored <= 4  # >= 12 tokens of context before each


def test_score_arithmetic_by_hand():
    score = Score(nats=10.0, tokens=4, chars=8)
    assert score.loss == 2.5
    assert score.ppl == pytest.approx(math.exp(2.5))
    assert score.bpc == pytest.approx(10.0 / (math.log(2) * 8))
    # Perplexity is exp of the mean over all tokens: two batches of 1 and 3 tokens with mean losses 1 and 3
    # give exp(10/4), not the mean of e^1 and e^3.
    assert Score(nats=1.0 + 3 * 3.0, tokens=4, chars=1).ppl == pytest.approx(math.exp(2.5))


@pytest.mark.parametrize("stride", [None, 5])
def test_total_loss_equals_per_token_losses_added_up(stride):
    model = tiny_model(pos="alibi").eval()
    tokens = np.random.default_rng(0).integers(0, 256, 60).astype(np.uint16)
    plan = window_plan(len(tokens), 16, stride)
    got = total_loss(
        model, tokens, plan, batch_size=3, device=torch.device("cpu"), amp=torch.autocast("cpu", enabled=False)
    )
    expected = 0.0
    with torch.no_grad():
        for w in plan:
            window = torch.from_numpy(tokens[w.start : w.end + 1].astype(np.int64))[None]
            losses = F.cross_entropy(model(window[:, :-1])[0][0], window[0, 1:], reduction="none")
            expected += float(losses[-w.scored :].sum())
    assert got == pytest.approx(expected, rel=1e-5)


def test_metric_names_have_no_dots():
    assert [metric_suffix(m) for m in (0.5, 1.0, 4, 8.0)] == ["0p5x", "1x", "4x", "8x"]


@pytest.fixture(scope="module")
def trained(data_dirs, tmp_path_factory):
    """Tiny rope and learned models trained on the generated corpus."""
    runs = {}
    for pos in ("rope", "learned"):
        paths = paths_in(tmp_path_factory.mktemp(pos), data_dirs)
        train(tiny_config(model={"pos": pos}), paths)
        runs[pos] = paths
    return runs


def evaluate_run(paths, tmp_path, pos, **eval_changes):
    cfg = tiny_config(model={"pos": pos}, eval=eval_changes)
    out = {name: tmp_path / name for name in ("eval.json", "curve.json", "samples.txt", "context_use")}
    metrics = evaluate_checkpoint(
        cfg, paths.best, paths.encoded, out["eval.json"], out["curve.json"], out["samples.txt"], out["context_use"]
    )
    return metrics, out


def test_evaluation_metrics_and_extrapolation_to_4x(trained, tmp_path):
    metrics, out = evaluate_run(trained["rope"], tmp_path, "rope")
    assert metrics["test_ppl"] == pytest.approx(math.exp(metrics["test_loss"]), rel=1e-5)
    assert (
        min(metrics["val_bpc"], metrics["test_bpc"])
        <= metrics["holdout_bpc"]
        <= max(metrics["val_bpc"], metrics["test_bpc"])
    )
    assert json.loads(out["eval.json"].read_text()) == metrics
    curve = json.loads(out["curve.json"].read_text())
    assert [row["context"] for row in curve] == [8, 16, 32, 64, 128]
    at_4x = curve[3]  # the metrics are the curve's values at 4x, each window scored whole or slid
    assert (metrics["ppl_at_4x"], metrics["sliding_ppl_at_4x"]) == (at_4x["nonoverlapping_ppl"], at_4x["sliding_ppl"])
    assert 1 < metrics["ppl_at_4x"] < 400 and 1 < metrics["sliding_ppl_at_4x"] < 400  # trained: below uniform
    samples = out["samples.txt"].read_text()
    assert samples.count("=== prompt:") == 3 and "ROMEO:\n" in samples
    # The context-use diagnostics: metrics beside the others, a curve per diagnostic in the folder.
    # Gains are differences of mean losses (nats), so within what a 400-token vocabulary can lose: ln 400.
    assert abs(metrics["context_gain_at_8x"]) < math.log(400) and abs(metrics["copy_gain_random_at_7x"]) < math.log(400)
    assert len(json.loads((out["context_use"] / "loss_by_position.json").read_text())) == 128
    assert {path.name for path in out["context_use"].iterdir()} == {
        "loss_by_position.json",
        "retrieval.json",
        "attention.json",
    }


def test_rope_is_scored_once_more_per_scaling_method_past_the_training_context(trained, tmp_path):
    metrics, out = evaluate_run(trained["rope"], tmp_path, "rope")  # eval.rope_scaling: every method by default
    assert {m for m in metrics if m.endswith(tuple(f"_{method}" for method in ROPE_SCALING_METHODS))} == {
        f"ppl_at_{k}x_{method}" for k in (2, 4, 8) for method in ROPE_SCALING_METHODS
    }  # past the training context only: up to it, each method is the identity
    assert all(1 < metrics[f"ppl_at_8x_{m}"] < 400 * 10 for m in ROPE_SCALING_METHODS)  # scored, not blown up
    assert len({metrics["ppl_at_8x"], metrics["ppl_at_8x_linear"], metrics["ppl_at_8x_yarn"]}) == 3
    curve = json.loads(out["curve.json"].read_text())
    assert curve[1]["yarn_ppl"] == curve[1]["nonoverlapping_ppl"]  # 1x: the identity, not scored again
    assert curve[-1]["yarn_ppl"] == metrics["ppl_at_8x_yarn"]
    only_yarn, _ = evaluate_run(trained["rope"], tmp_path, "rope", rope_scaling=["yarn"])
    assert "ppl_at_8x_yarn" in only_yarn and "ppl_at_8x_linear" not in only_yarn
    assert only_yarn["ppl_at_8x_yarn"] == metrics["ppl_at_8x_yarn"]
    none, _ = evaluate_run(trained["rope"], tmp_path, "rope", rope_scaling=[])
    assert not any(m.endswith("_yarn") for m in none)


def test_scaling_is_skipped_with_a_reason_for_an_encoding_without_rotary_positions(trained, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        metrics, out = evaluate_run(trained["learned"], tmp_path, "learned")
    assert not any(m.endswith(tuple(f"_{method}" for method in ROPE_SCALING_METHODS)) for m in metrics)
    assert "eval.rope_scaling: skipped, model.pos=learned has no rotary positions to scale" in caplog.text
    assert all(row["yarn_ppl"] is None for row in json.loads(out["curve.json"].read_text()))


def test_learned_positions_record_null_with_a_reason_past_their_table(trained, tmp_path):
    metrics, out = evaluate_run(trained["learned"], tmp_path, "learned")
    assert metrics["ppl_at_8x"] is None and metrics["sliding_ppl_at_8x"] is None
    assert 1 < metrics["ppl_at_1x"] < 400  # within its table: scored, and trained below the uniform guess
    row = json.loads(out["curve.json"].read_text())[-1]
    assert row["context"] == 128 and row["reason"] == "model.pos=learned places 16 positions, not 128"


def test_contexts_longer_than_the_split_are_an_error(trained, tmp_path):
    with pytest.raises(ConfigError, match=r"eval\.contexts: the longest evaluation context, 16000 tokens"):
        evaluate_run(trained["rope"], tmp_path, "rope", contexts=[1, 1000])


def test_missing_checkpoint_names_the_stage(data_dirs, tmp_path):
    out = tmp_path / "x.json"
    with pytest.raises(MissingInputError, match=r"run the `train` stage first"):
        evaluate_checkpoint(tiny_config(), tmp_path / "none.pt", data_dirs / "encoded", out, out, out, tmp_path)


def test_plot_stage_writes_png_figures(trained, tmp_path):
    _, out = evaluate_run(trained["learned"], tmp_path, "learned")
    training_figure(trained["learned"].live, tmp_path / "fig" / "training.png")
    extrapolation_figure(out["curve.json"], 16, tmp_path / "fig" / "extrapolation.png")
    for name in ("training.png", "extrapolation.png"):
        data = (tmp_path / "fig" / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def _visible_y_labels(values: list[float]) -> list[str]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot(range(len(values)), values)
    plain_log_y(ax)
    fig.canvas.draw()
    low, high = ax.get_ylim()
    ticks = ax.yaxis.get_majorticklabels() + ax.yaxis.get_minorticklabels()
    labels = [t.get_text() for t in ticks if low <= t.get_position()[1] <= high and t.get_text()]
    plt.close(fig)
    return labels


def test_log_axes_write_nearly_flat_values_in_full():
    # ScalarFormatter wrote 10001..10005 as 1.0..5.0, its offset never shown on a log axis.
    labels = _visible_y_labels([10001, 10002, 10003, 10004, 10005])
    assert len(labels) >= 3 and all(10001 <= float(label) <= 10005 for label in labels), labels
    labels = _visible_y_labels([299.2, 296.9, 295.6, 295.1, 294.8])
    assert len(labels) >= 3 and all(294 <= float(label) <= 300 for label in labels), labels


def test_log_axes_spanning_decades_label_the_decades_only():
    assert _visible_y_labels([5, 50, 5000]) == ["10", "100", "1000"]


@pytest.mark.parametrize(("context", "stride"), [(16, None), (8, None), (8, 3), (5, 5), (16, 4)])
def test_chunked_plans_score_every_chunk_on_its_own(context, stride):
    chunk, n_chunks = 17, 6
    plan = split_plan(chunk * n_chunks, context, stride, chunk_tokens=chunk)
    for w in plan:
        assert w.start // chunk == w.end // chunk, "a window crosses into the next chunk"
    # Every token of every chunk but the first is scored exactly once: the first has nothing before it.
    assert scored_targets(plan) == [c * chunk + i for c in range(n_chunks) for i in range(1, chunk)]


CHUNKS = {"split": "random_chunks", "val_fraction": 0.1, "test_fraction": 0.1}


@pytest.fixture(scope="module")
def chunked_run(corpus, tmp_path_factory):
    """A tiny rope model trained and evaluated on data.split=random_chunks: chunks of train.context + 1 tokens."""
    cfg = make_config(
        data=CHUNKS,
        tokenizer={"vocab_size": 400},
        model=TINY_MODEL,
        train={**TINY_TRAIN, "max_steps": 30},
        eval={"stride": 4, "sample_tokens": 4},
    )
    paths = paths_in(tmp_path_factory.mktemp("chunked_run"), make_data_dirs(corpus, tmp_path_factory.mktemp("d"), cfg))
    train(cfg, paths)
    out = {name: paths.metrics.parent / name for name in ("eval.json", "curve.json", "samples.txt", "context_use")}
    metrics = evaluate_checkpoint(cfg, paths.best, paths.encoded, *out.values())
    return cfg, paths, metrics, json.loads(out["curve.json"].read_text())


def test_random_chunks_evaluate_whole_chunks_and_record_longer_contexts_as_null(chunked_run):
    cfg, paths, metrics, curve = chunked_run
    assert cfg.chunk_tokens == 17
    meta = json.loads((paths.encoded / "meta.json").read_text())
    assert meta["chunk_tokens"] == 17 and meta["splits"]["test"]["tokens"] % 17 == 0
    assert math.isfinite(metrics["ppl_at_0p5x"]) and math.isfinite(metrics["ppl_at_1x"])
    assert metrics["ppl_at_1x"] == pytest.approx(metrics["test_ppl"], rel=1e-6)  # 1x is the chunk itself
    for row in curve:
        if row["context"] > 16:
            assert row["nonoverlapping_ppl"] is None and row["sliding_ppl"] is None
            assert "data.split=random_chunks: every sample is one chunk of 17 tokens" in row["reason"]
    assert metrics["ppl_at_2x"] is None and metrics["sliding_ppl_at_8x"] is None
    # No diagnostic of context use: its windows would cross from one shuffled chunk into the next.
    assert metrics["context_gain_at_2x"] is None and metrics["attn_distance_l0_at_1x"] is None
    assert metrics["copy_gain_text_at_0p25x"] is None and metrics["band_loss_0to1x"] is None


def test_random_chunks_train_on_whole_chunks():
    tokens = np.arange(17 * 40, dtype=np.uint16)
    sampler = BatchSampler(tokens, 16, 64, seed=0, chunk_tokens=17)
    x, y = sampler.next(torch.device("cpu"))
    assert x.shape == (64, 16) and bool((x[:, 0] % 17 == 0).all())  # each sample starts a chunk ...
    assert torch.equal(y[:, -1], x[:, 0] + 16)  # ... and ends with its last token
    windows = eval_windows(tokens, 16, None, chunk_tokens=17)
    assert windows.shape == (40, 17) and torch.equal(windows[:, 0], torch.arange(40) * 17)


def test_data_encoded_for_another_split_is_refused_before_training(data_dirs, tmp_path):
    cfg = make_config(data={"split": "random_chunks"}, model={"size": "tiny"}, train={"device": "cpu"})
    with pytest.raises(
        DataError, match=r"made with data\.split=contiguous .* params ask for data\.split=random_chunks"
    ):
        train(cfg, paths_in(tmp_path, data_dirs))


def test_sliding_scores_use_only_the_logits_they_need_and_match_the_full_forward(data_dirs):
    # total_loss asks the model for the scored positions' logits only; the sum must be the full forward's.
    splits, _ = load_splits(data_dirs / "encoded")
    tokens = splits["test"]
    model = tiny_model(pos="alibi", vocab_size=400, max_seq_len=32).eval()
    plan = split_plan(len(tokens), 32, 8, None)
    fast = total_loss(model, tokens, plan, 16, torch.device("cpu"), contextlib.nullcontext())
    slow = 0.0
    for w in plan:
        row = torch.from_numpy(tokens[w.start : w.end + 1].astype(np.int64))[None]
        logits, _ = model(row[:, :-1])
        slow += float(F.cross_entropy(logits[0, -w.scored :], row[0, -w.scored :], reduction="sum"))
    assert fast == pytest.approx(slow, rel=1e-5)
