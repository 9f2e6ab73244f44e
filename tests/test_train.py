import contextlib
import itertools
import json
import logging
import math
import platform
import re
import shutil

import numpy as np
import pytest
import torch

import llama_pe.core.train as train_module
from llama_pe.core.checkpoint import load_checkpoint
from llama_pe.core.data.batches import BatchSampler, eval_windows
from llama_pe.core.device import cpu_model, resolve_device
from llama_pe.core.model import build_model
from llama_pe.core.optimizer import lr_at, make_optimizer
from llama_pe.core.train import Paths, TrainingError, train, unigram_loss
from llama_pe.errors import DataError
from llama_pe.positions.catalogue import ENCODINGS, hf_encoding
from llama_pe.settings.config import ConfigError
from tests.conftest import make_config
from tests.model.conftest import learnable, tiny_args

TINY_TRAIN = dict(
    context=16,
    batch_size=8,
    max_steps=80,
    warmup_steps=5,
    lr=3e-3,
    min_lr=3e-4,
    eval_interval=20,
    eval_windows=None,
    eval_batch_size=32,
    patience=None,
    device="cpu",
    precision="fp32",
)
TINY_MODEL = {"size": "tiny", "dim": 32, "n_heads": 4, "n_kv_heads": 2}
TIMING = ("tokens_per_sec", "wall_time_s", "val_time_s")


def paths_in(tmp_path, data_dirs) -> Paths:
    return Paths(
        encoded=data_dirs / "encoded",
        tokenizer=data_dirs / "tokenizer",
        best=tmp_path / "models" / "best.pt",
        last=tmp_path / "models" / "last.pt",
        metrics=tmp_path / "metrics" / "train.json",
        live=tmp_path / "plots" / "train",
    )


TINY_EVAL = {"stride": 4, "sample_tokens": 10}


def tiny_config(model=None, eval=None, **train_changes):
    return make_config(
        model={**TINY_MODEL, **(model or {})}, train={**TINY_TRAIN, **train_changes}, eval={**TINY_EVAL, **(eval or {})}
    )


def curves(paths: Paths) -> dict[str, str]:
    return {str(p.relative_to(paths.live)): p.read_text() for p in sorted(paths.live.rglob("*.tsv"))}


def without_timing(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING}


# ---------------------------------------------------------------------------------------------- schedule


def test_lr_warms_up_linearly_then_decays_by_cosine_to_min_lr():
    cfg = tiny_config(max_steps=110, warmup_steps=10, lr=1e-3, min_lr=1e-4).train
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(4, cfg) == pytest.approx(5e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx(5.5e-4)  # halfway through the cosine: the mean of lr and min_lr
    assert lr_at(110, cfg) == pytest.approx(1e-4)
    assert lr_at(500, cfg) == pytest.approx(1e-4)
    decay = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(decay))


def test_token_budget_sets_the_number_of_steps():
    cfg = tiny_config(max_steps=None, max_tokens=10_000).train  # 128 tokens a step
    assert cfg.total_steps == 79


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("pos", list(ENCODINGS))
def test_weight_decay_is_on_attention_and_feed_forward_matrices_only(pos, tied):
    model = build_model(tiny_args(pos=pos, tie_embeddings=tied, **learnable(pos)))
    optimizer = make_optimizer(model, tiny_config().train, torch.device("cpu"))
    decayed = {id(p) for p in optimizer.param_groups[0]["params"]}
    names = {name for name, p in model.named_parameters() if id(p) in decayed}
    matrices = {name for name, _ in model.named_parameters() if ".attention.w" in name or ".feed_forward.w" in name}
    assert names == matrices  # no norm, embedding, output head (tied or not) or position parameter
    assert optimizer.param_groups[1]["weight_decay"] == 0.0


def test_the_cpu_model_is_read_from_cpuinfo_and_falls_back_to_the_platform(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t: fpu\n")
    assert cpu_model(cpuinfo) == "AMD EPYC 7B13"
    assert cpu_model(tmp_path / "absent") == (platform.processor() or platform.machine() or "unknown")


def test_batches_are_seeded_windows_and_eval_windows_are_fixed():
    tokens = np.arange(1000, dtype=np.uint16)
    x, y = BatchSampler(tokens, 16, 4, seed=3).next(torch.device("cpu"))
    x2, _ = BatchSampler(tokens, 16, 4, seed=3).next(torch.device("cpu"))
    assert torch.equal(x, x2) and torch.equal(y, x + 1)  # targets are the inputs shifted by one
    windows = eval_windows(tokens, 16, None)
    assert windows.shape == (62, 17) and torch.equal(windows[1, :2], torch.tensor([16, 17]))
    assert eval_windows(tokens, 16, 5).shape == (5, 17)


def test_unigram_loss_by_hand():
    # Train counts 3 x token 0, 1 x token 1, none of token 2; add-one: p = 4/7, 2/7, 1/7.
    loss = unigram_loss(np.array([0, 0, 0, 1]), np.array([0, 2]), vocab_size=3)
    assert loss == pytest.approx(-(math.log(4 / 7) + math.log(1 / 7)) / 2)


# ---------------------------------------------------------------------------------------------- runs


def test_a_tiny_run_lowers_the_loss_and_writes_its_outputs(data_dirs, tmp_path):
    paths = paths_in(tmp_path, data_dirs)
    metrics = train(tiny_config(), paths)
    assert metrics["best_val_loss"] < math.log(400) - 1.0
    assert metrics["best_val_bpc"] < metrics["unigram_val_bpc"]
    assert metrics["trained_steps"] == 80 and metrics["trained_tokens"] == 80 * 128
    assert metrics["device"] == "cpu" and metrics["precision"] == "fp32"
    kept = load_checkpoint(paths.best)["model"]  # every weight saved, counted once: the tied head is the embedding
    assert metrics["params"] == sum(t.numel() for name, t in kept.items() if name != "output.weight")
    assert metrics["cpu"] == cpu_model() and metrics["accelerator"] is None  # the machine of the result
    assert paths.best.is_file() and paths.last.is_file() and paths.metrics.is_file()
    tsvs = curves(paths)
    assert {"plots/metrics/train/loss.tsv", "plots/metrics/val/loss.tsv", "plots/metrics/train/lr.tsv"} <= set(tsvs)
    assert len(tsvs["plots/metrics/val/loss.tsv"].splitlines()) == 1 + 4  # header and one row per evaluation
    # tokens_per_sec counts the training steps only; validations and checkpoints are timed on their own. The
    # times are rounded to 10 ms, so the seconds that tokens_per_sec implies match wall - val within that.
    assert 0 < metrics["val_time_s"] < metrics["wall_time_s"]
    implied_seconds = 80 * 128 / metrics["tokens_per_sec"]
    assert abs(implied_seconds - (metrics["wall_time_s"] - metrics["val_time_s"])) <= 0.011


@pytest.mark.parametrize("model", [{"pos": pos} for pos in ENCODINGS] + [{"pos": hf_encoding(), "impl": "hf"}])
def test_every_encoding_and_the_hf_reference_train(model, data_dirs, tmp_path):
    metrics = train(tiny_config(model=model, max_steps=20), paths_in(tmp_path, data_dirs))
    assert metrics["best_val_loss"] < math.log(400)


def test_two_identical_runs_give_identical_metrics(data_dirs, tmp_path):
    first = train(tiny_config(model={"dropout": 0.1}), paths_in(tmp_path / "a", data_dirs))
    second = train(tiny_config(model={"dropout": 0.1}), paths_in(tmp_path / "b", data_dirs))
    assert without_timing(first) == without_timing(second)
    # The best checkpoint is a DVC output: the same code, params and data give the same bytes, so the same hash.
    best = [paths_in(tmp_path / run, data_dirs).best for run in ("a", "b")]
    assert best[0].read_bytes() == best[1].read_bytes()
    assert not {"train_seconds", "val_seconds"} & set(load_checkpoint(best[0])["state"])


@pytest.mark.parametrize("pos", ["rope", "alibi"])
def test_interrupted_and_resumed_equals_uninterrupted(data_dirs, tmp_path, pos, caplog):
    cfg = tiny_config(model={"pos": pos, "dropout": 0.1}, patience=2)
    whole_paths = paths_in(tmp_path / "whole", data_dirs)
    whole = train(cfg, whole_paths)
    parts_paths = paths_in(tmp_path / "parts", data_dirs)
    # Stopped 7 steps after the checkpoint of step 20: those steps are lost, as in a kill, and redone.
    assert train(cfg, parts_paths, stop_after=27) is None
    with caplog.at_level(logging.INFO, logger="llama_pe"):
        resumed = train(cfg, parts_paths)
    assert "resuming from" in caplog.text and "at step 20" in caplog.text
    assert without_timing(resumed) == without_timing(whole)
    assert curves(parts_paths) == curves(whole_paths)
    assert whole_paths.best.read_bytes() == parts_paths.best.read_bytes(), "a resumed run's best.pt is another's"


def test_checkpoint_holds_everything_to_resume(data_dirs, tmp_path):
    paths = paths_in(tmp_path, data_dirs)
    train(tiny_config(), paths)
    checkpoint = load_checkpoint(paths.last)
    assert {"model_args", "model", "tokenizer_model", "optimizer", "scaler", "state", "rng", "provenance"} <= set(
        checkpoint
    )
    assert "llama_pe/core/model/transformer.py" in checkpoint["provenance"]["code"]
    assert checkpoint["model_args"]["dim"] == 32
    assert checkpoint["optimizer"]["state"], "optimizer moments are saved"
    assert {"torch", "sampler"} <= set(checkpoint["rng"])
    state = checkpoint["state"]
    assert state["step"] == 80 and state["tokens"] == 80 * 128
    assert {"best_val_loss", "best_step", "evals_since_best", "history"} <= set(state)
    assert (paths.encoded.parent / "tokenizer" / "tokenizer.model").read_bytes() == checkpoint["tokenizer_model"]


def test_checkpoint_of_other_params_is_not_resumed(data_dirs, tmp_path, caplog):
    paths = paths_in(tmp_path, data_dirs)
    assert train(tiny_config(), paths, stop_after=30) is None
    with caplog.at_level(logging.INFO, logger="llama_pe"):
        metrics = train(tiny_config(lr=1e-3), paths)
    assert "was made with other params or data (train.lr: 0.003 -> 0.001): training from scratch" in caplog.text
    assert metrics["trained_steps"] == 80
    assert without_timing(metrics) == without_timing(train(tiny_config(lr=1e-3), paths_in(tmp_path / "b", data_dirs)))


def test_checkpoint_of_other_code_is_not_resumed(data_dirs, tmp_path, caplog, monkeypatch):
    paths = paths_in(tmp_path, data_dirs)
    assert train(tiny_config(), paths, stop_after=30) is None  # a checkpoint at step 20
    real = train_module.code_fingerprint("llama_pe.core.train")
    edited = {**real, "llama_pe/core/model/layers.py": "0" * 64}
    monkeypatch.setattr(train_module, "code_fingerprint", lambda module: edited)
    with caplog.at_level(logging.INFO, logger="llama_pe"):
        metrics = train(tiny_config(), paths)
    assert "was made by other code (changed since: llama_pe/core/model/layers.py): training from scratch" in caplog.text
    assert "resuming" not in caplog.text
    assert without_timing(metrics) == without_timing(train(tiny_config(), paths_in(tmp_path / "fresh", data_dirs)))


@pytest.mark.parametrize("provenance", [None, {"params": "0123abcd", "code": "4567ef"}, {"params": {}}])
def test_a_checkpoint_of_an_older_version_is_not_resumed(data_dirs, tmp_path, caplog, provenance):
    paths = paths_in(tmp_path, data_dirs)
    assert train(tiny_config(), paths, stop_after=30) is None
    checkpoint = load_checkpoint(paths.last)
    checkpoint["provenance"] = provenance
    torch.save(checkpoint, paths.last)
    with caplog.at_level(logging.INFO, logger="llama_pe"):
        metrics = train(tiny_config(), paths)
    assert "records no provenance this version can read (an older version wrote it): training from scratch" in (
        caplog.text
    )
    assert metrics["trained_steps"] == 80


def test_a_finished_run_is_trained_again_not_resumed(data_dirs, tmp_path, caplog):
    # The stage reruns on a finished run only when forced or when its outputs were lost: train, don't keep them.
    paths = paths_in(tmp_path, data_dirs)
    first = train(tiny_config(), paths)
    paths.best.unlink()
    with caplog.at_level(logging.INFO, logger="llama_pe"):
        second = train(tiny_config(), paths)
    assert "holds a finished run (step 80): training from scratch" in caplog.text
    assert without_timing(first) == without_timing(second) and paths.best.is_file()


def test_a_truncated_last_checkpoint_is_kept_aside_and_training_starts_afresh(data_dirs, tmp_path, caplog):
    paths = paths_in(tmp_path, data_dirs)
    assert train(tiny_config(), paths, stop_after=30) is None
    damaged = paths.last.read_bytes()[:1000]
    paths.last.write_bytes(damaged)
    with caplog.at_level(logging.INFO, logger="llama_pe"):
        metrics = train(tiny_config(), paths)
    assert re.search(r"last\.pt cannot be resumed \(is not a readable checkpoint, truncated or damaged", caplog.text)
    assert "dvc checkout" not in caplog.text  # last.pt is not in DVC's cache: no advice that cannot work
    assert "kept as" in caplog.text and "training starts from scratch" in caplog.text
    assert (paths.last.parent / "last.pt.damaged").read_bytes() == damaged
    assert metrics["trained_steps"] == 80


def test_early_stopping_ends_the_run(data_dirs, tmp_path):
    # A learning rate this low never improves by much, but it does improve; an absurd one gets worse and stops.
    metrics = train(
        tiny_config(lr=0.5, min_lr=0.5, warmup_steps=0, patience=1, max_steps=200, grad_clip=0.0),
        paths_in(tmp_path, data_dirs),
    )
    assert metrics["stopped_early"] is True and metrics["trained_steps"] < 200


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"batch_size": 0}, r"train\.batch_size: expected a positive integer, got 0"),
        ({"context": -4}, r"train\.context: expected a positive integer, got -4"),
        ({"lr": 0.0}, r"train\.lr: expected a positive number, got 0\.0"),
        ({"max_steps": 0}, r"train\.max_steps: expected a positive integer or null, got 0"),
        ({"max_steps": None}, r"train\.max_steps / train\.max_tokens: expected exactly one budget"),
        ({"max_tokens": 1000}, r"expected exactly one budget"),
        ({"nproc": 0}, r"train\.nproc: expected a positive integer, got 0"),
        ({"nproc": 3}, r"train\.batch_size: expected a multiple of train\.nproc=3 .*, got 8"),
    ],
)
def test_bad_training_settings(changes, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(**changes)


def test_context_longer_than_a_split_fails_before_training(data_dirs, tmp_path):
    paths = paths_in(tmp_path, data_dirs)
    with pytest.raises(ConfigError, match=r"train\.context: 100000 tokens do not fit the train split"):
        train(tiny_config(context=100_000), paths)
    assert not paths.last.exists()


def test_evaluation_contexts_longer_than_a_split_fail_before_training(data_dirs, tmp_path):
    # 8 x 256 tokens is longer than the val and test splits of the small corpus: found before step one, not after.
    test_tokens = json.loads((data_dirs / "encoded/meta.json").read_text())["splits"]["test"]["tokens"]
    assert 256 < test_tokens < 8 * 256
    paths = paths_in(tmp_path, data_dirs)
    with pytest.raises(ConfigError, match=r"eval\.contexts: the longest evaluation context, 2048 tokens \(8 × "):
        train(tiny_config(context=256), paths)
    assert not paths.last.exists() and not paths.live.exists()


@pytest.fixture
def damaged_copy(data_dirs, tmp_path):
    """A copy of the data folders that a test may damage."""
    copy = tmp_path / "data"
    shutil.copytree(data_dirs, copy)
    return copy


def test_a_truncated_token_file_names_the_stage_to_rerun(damaged_copy, tmp_path):
    train_bin = damaged_copy / "encoded/train.bin"
    train_bin.write_bytes(train_bin.read_bytes()[:1001])
    with pytest.raises(
        DataError, match=r"train\.bin holds 1001 bytes, but .*meta\.json says \d+ tokens .*dvc repro encode"
    ):
        train(tiny_config(), paths_in(tmp_path, damaged_copy))


def test_meta_that_disagrees_with_the_token_files_names_the_stage_to_rerun(damaged_copy, tmp_path):
    meta_path = damaged_copy / "encoded/meta.json"
    meta = json.loads(meta_path.read_text())
    meta["vocab_size"] = 50
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"holds token id \d+, but meta\.json gives a vocabulary of 50.*encode"):
        train(tiny_config(), paths_in(tmp_path, damaged_copy))


def test_a_tokenizer_other_than_the_encoded_datas_is_refused(damaged_copy, corpus, tmp_path):
    from llama_pe.core.data.tokenizer import save_tokenizer, train_tokenizer

    save_tokenizer(
        train_tokenizer(corpus, make_config(tokenizer={"vocab_size": 390}).tokenizer), damaged_copy / "tokenizer"
    )
    with pytest.raises(DataError, match=r"tokenizer\.model is not the one the encoded data was made with"):
        train(tiny_config(), paths_in(tmp_path, damaged_copy))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_an_error_not_a_fallback():
    with pytest.raises(ConfigError, match=r"train\.device: cuda was asked for, but PyTorch sees no CUDA GPU"):
        resolve_device("cuda")


def test_fp16_on_cpu_is_an_error(data_dirs, tmp_path):
    with pytest.raises(ConfigError, match=r"train\.precision: fp16 needs a CUDA GPU"):
        train(tiny_config(precision="fp16"), paths_in(tmp_path, data_dirs))


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(data_dirs, tmp_path):
    paths = paths_in(tmp_path, data_dirs)
    cfg = tiny_config(lr=1e30, min_lr=1e30, warmup_steps=0, grad_clip=0.0, eval_interval=1, max_steps=50)
    with pytest.raises(TrainingError, match=r"step \d+: the (training|validation) loss is (nan|inf)"):
        train(cfg, paths)
    if paths.last.exists():
        kept = load_checkpoint(paths.last)
        assert all(torch.isfinite(t).all() for t in kept["model"].values())
    assert not paths.metrics.exists()


def test_bf16_on_cpu_trains(data_dirs, tmp_path):
    metrics = train(tiny_config(precision="bf16", max_steps=10), paths_in(tmp_path, data_dirs))
    # Ten steps lower the loss from the uniform guess, ln(vocab size), as fp32's do.
    assert metrics["precision"] == "bf16" and metrics["best_val_loss"] < math.log(400) - 0.2


# ---------------------------------------------------------------------------------------------- train.pos_lr_scale


def legacy_optimizer(model, cfg, device):
    """make_optimizer as it was before train.pos_lr_scale: the position encoding's parameters in the no-decay group."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)} | {id(model.output.weight)}
    encoding = {id(p) for p in model.positions.parameters()}
    decay, no_decay = [], []
    for param in model.parameters():
        (no_decay if param.ndim < 2 or id(param) in tables | encoding else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)


def position_parameter_names(model) -> set[str]:
    return {name for name, _ in model.named_parameters() if name.startswith("positions.")}


@pytest.mark.parametrize("pos", list(ENCODINGS))
def test_at_pos_lr_scale_1_the_steps_are_bit_identical_to_the_legacy_optimizer(pos):
    cfg = tiny_config(model={"pos": pos}, max_steps=6, warmup_steps=2).train
    tokens = np.random.default_rng(0).integers(0, 256, 4000).astype(np.uint16)  # tiny_args' vocabulary
    device, amp = torch.device("cpu"), contextlib.nullcontext()
    weights = []
    for make in (make_optimizer, legacy_optimizer):
        torch.manual_seed(0)
        model = build_model(tiny_args(pos=pos, dropout=0.1, **learnable(pos)))
        optimizer = make(model, cfg, device)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        sampler = BatchSampler(tokens, cfg.context, cfg.batch_size, seed=0)
        for step in range(cfg.total_steps):
            train_module.train_step(model, optimizer, scaler, sampler, cfg, lr_at(step, cfg), device, amp)
        weights.append(model.state_dict())
    new, old = weights
    assert all(torch.equal(new[name], old[name]) for name in old), pos


def test_at_pos_lr_scale_1_a_run_has_the_metrics_of_the_legacy_optimizer(data_dirs, tmp_path, monkeypatch):
    cfg = tiny_config(model={"pos": "fire"}, max_steps=20)
    new_paths, old_paths = paths_in(tmp_path / "new", data_dirs), paths_in(tmp_path / "old", data_dirs)
    new = train(cfg, new_paths)
    monkeypatch.setattr(train_module, "make_optimizer", legacy_optimizer)
    old = train(cfg, old_paths)
    assert without_timing(new) == without_timing(old)
    new_weights, old_weights = (load_checkpoint(paths.best)["model"] for paths in (new_paths, old_paths))
    assert all(torch.equal(new_weights[name], old_weights[name]) for name in old_weights)  # metrics round to 6 digits


# The encodings with parameters of their own (alibi and abs_rel with learnable slopes), from the registry.
OWN_PARAMETERS = [
    pos for pos in ENCODINGS if position_parameter_names(build_model(tiny_args(pos=pos, **learnable(pos))))
]


@pytest.mark.parametrize("pos", OWN_PARAMETERS)
def test_the_position_parameters_learn_at_pos_lr_scale_times_the_lr(pos, data_dirs, tmp_path, monkeypatch):
    cfg = tiny_config(model={"pos": pos, **learnable(pos)}, max_steps=12, warmup_steps=4, pos_lr_scale=10.0)
    seen = []
    real_step = train_module.train_step

    def recording_step(model, optimizer, *args):
        loss = real_step(model, optimizer, *args)
        names = {id(p): name for name, p in model.named_parameters()}
        seen.append([({names[id(p)] for p in group["params"]}, group["lr"]) for group in optimizer.param_groups])
        return loss

    monkeypatch.setattr(train_module, "train_step", recording_step)
    train(cfg, paths_in(tmp_path, data_dirs))
    model = build_model(tiny_args(pos=pos, **learnable(pos)))
    assert len(seen) == 12  # every step of the run
    for step, groups in enumerate(seen):
        scheduled = lr_at(step, cfg.train)
        own = [lr for names, lr in groups if names == position_parameter_names(model)]
        others = [lr for names, lr in groups if not names & position_parameter_names(model)]
        assert own == [10.0 * scheduled] and others == [scheduled] * (len(groups) - 1), (step, groups)
