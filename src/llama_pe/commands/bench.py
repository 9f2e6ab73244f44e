"""`llama-pe bench`: speed, memory and MFU of every encoding and of Hugging Face's Llama, measured side by side.

Everything is measured in one process and interleaved (A B C, B C A, ..., after a warm-up), and each figure is
the median over rounds, so that the machine's drift and noise fall on every variant alike. Each ratio and cost is
also taken round by round, and marked where that spread exceeds it (see judge). MFU is the achieved
FLOP/s (nanoGPT's estimate: 6 N + 12 L H Q T per token, N the parameters that multiply) over the peak of a
large matrix multiply measured in the same run (fp32 on a CPU, bf16 on a GPU). A benchmark measures; it asserts
nothing (the figures of record are in benchmarks/README.md).
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
import typing
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from llama_pe.commands.bench_measure import (
    GENERATION_PAIRS,
    PROFILED_STEPS,
    VOCAB,
    Figures,
    Run,
    Variant,
    _sync,
    cpu_peak_memory_mb,
    eval_seconds,
    flops_per_token,
    matmul_peak,
    model_for,
    profile_training,
    train_seconds,
    trainer_step,
    variant_config,
)
from llama_pe.commands.bench_results import MARKS, _results, judge
from llama_pe.core.device import autocast, resolve_device, resolve_precision
from llama_pe.core.generate import generate, stream_tokens
from llama_pe.errors import ConfigError
from llama_pe.io import write_json
from llama_pe.positions.catalogue import encoding, hf_encoding
from llama_pe.settings.architecture import SIZES
from llama_pe.settings.config import TrainConfig
from llama_pe.settings.yaml12 import load_yaml

log = logging.getLogger(__name__)
# The least value of each count option.
LEAST = {"--rounds": 1, "--steps": 1, "--warmup": 0, "--context": 1, "--batch-size": 1, "--generate-tokens": 0}


def parse_dropouts(text: str) -> list[float]:
    """--dropout's comma-separated numbers; their range is check_settings' to check."""
    values = []
    for item in text.split(","):
        try:
            values.append(float(item))
        except ValueError:
            raise ConfigError(
                f"--dropout: expected numbers in [0, 1), comma-separated, e.g. 0,0.1; {item!r} is not a number"
            ) from None
    return values


def check_settings(
    size: str,
    encodings: list[str],
    dropouts: list[float],
    counts: dict[str, int],
    device_setting: str,
    precision_setting: str,
) -> tuple[torch.device, str]:
    """Every option of bench, before anything is built or timed; the device and precision they resolve to."""
    if size not in SIZES:
        raise ConfigError(f"--size: unknown size {size!r}; valid sizes: {', '.join(SIZES)}")
    for name in encodings:
        encoding(name, "--pos")
    for dropout in dropouts:
        if not 0 <= dropout < 1:  # nan fails this too
            raise ConfigError(f"--dropout: expected numbers in [0, 1), got {dropout:g}")
    for option, values in (("--pos", encodings), ("--dropout", dropouts)):
        repeated = next((v for i, v in enumerate(values) if v in values[:i]), None)
        if repeated is not None:  # that variant would be timed twice in every round and reported twice
            raise ConfigError(f"{option}: {repeated} is given twice; give each value once")
    for option, value in counts.items():
        if value < LEAST[option]:
            raise ConfigError(f"{option}: expected an integer of at least {LEAST[option]}, got {value}")
    for option, setting, given in (
        ("--device", "device", device_setting),
        ("--precision", "precision", precision_setting),
    ):
        valid = typing.get_args(typing.get_type_hints(TrainConfig)[setting])  # train.device's names, and so on
        if given not in valid:
            raise ConfigError(f"{option}: expected one of {', '.join(valid)}; got {given!r}")
    device = resolve_device(device_setting, setting="--device")
    return device, resolve_precision(precision_setting, device, setting="--precision")


def check_out(out: Path) -> None:
    """--out must be a file in a folder that is writable or can be made (atomic_path makes the missing ones)."""
    if out.is_dir():
        raise ConfigError(f"--out: {out} is a folder; name a file in it, e.g. {out / 'bench.json'}")
    folder = out.parent
    while not folder.exists():  # the nearest folder that exists is where the new ones would be made
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"--out: {out} cannot be written: {folder} is a file, not a folder")
    try:  # a file made and removed again: permissions, read-only or virtual file systems, root or not
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as err:
        raise ConfigError(
            f"--out: {out} cannot be written: no file can be made in {folder} ({err.strerror}); choose another --out"
        ) from None


def load_params(params_file: Path, size: str, variants: list[Variant]) -> dict[str, Any]:
    """params.yaml with model.size set, every variant's config checked as the pipeline checks it."""
    if not params_file.is_file():
        raise ConfigError(f"{params_file}: params file not found (run llama-pe bench in the project's folder)")
    params = load_yaml(params_file.read_text(encoding="utf-8"))
    params["model"]["size"] = size
    for variant in variants:
        variant_config(params, variant)
    return params


def run_bench(
    size: str,
    encodings: list[str],
    hf: bool,
    dropouts: list[float],
    context: int,
    batch_size: int,
    rounds: int,
    steps: int,
    warmup: int,
    device_setting: str,
    precision_setting: str,
    generate_tokens: int,
    params_file: Path,
    profile: bool = False,
) -> dict[str, Any]:
    counts = {
        "--rounds": rounds,
        "--steps": steps,
        "--warmup": warmup,
        "--context": context,
        "--batch-size": batch_size,
        "--generate-tokens": generate_tokens,
    }
    device, precision = check_settings(size, encodings, dropouts, counts, device_setting, precision_setting)
    variants = [Variant("native", pos, d) for d in dropouts for pos in encodings]
    variants += [Variant("hf", hf_encoding(), d) for d in dropouts] if hf else []
    params = load_params(params_file, size, variants)
    if warning := rounds_warning(rounds):
        log.warning(warning)
    amp = autocast(device, precision)
    torch.set_float32_matmul_precision("high")
    with logging_redirect_tqdm():  # log lines print above the bars instead of through them
        peak = measure_peak(device, precision)
        torch.manual_seed(0)
        batch = tuple(t.to(device) for t in torch.randint(VOCAB, (2, batch_size, context)).unbind(0))
        runs = build_runs(params, variants, context, batch, warmup, amp, device)
        for round_ in range(rounds):
            time_round(runs, round_, rounds, batch, steps, amp, device)
        if device.type == "cpu":
            measure_cpu_memory(runs, params, context, batch_size)
        generation = _generation(runs, generate_tokens, device) if generate_tokens else {}
        profiles = _profiles(runs, batch, amp, device) if profile else {}
    figures = {variant: run.figures for variant, run in runs.items()}
    settings = dict(size=size, context=context, batch_size=batch_size, rounds=rounds, steps=steps, warmup=warmup)
    results = _results(variants, figures, peak, device, precision, generation, settings)
    for row in results["rows"]:
        name = Variant(row["impl"], row["pos"], row["dropout"]).name
        if name in profiles:
            table_, summary = profiles[name]
            row["profile"] = {**summary, "gemm_efficiency": summary["gemm_flops_per_sec"] / peak, "table": table_}
    return results


def rounds_warning(rounds: int) -> str | None:
    """What the table's marks cannot say about a run of too few rounds."""
    if rounds == 1:
        return (
            f"--rounds 1: one round measures no spread, so every ratio and cost is marked {MARKS['unmeasured']} "
            "(unverified); use 3 or more rounds for figures to quote"
        )
    if rounds == 2:
        return (
            f"--rounds 2: a median of 2 rounds is their mean, and their spread a weak check (a figure left without "
            f"{MARKS['noise']} may still move); use 3 or more rounds for figures to quote"
        )
    return None


def _bar(total: int, desc: str, unit: str = "variant") -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, mininterval=1.0, leave=False)


def measure_peak(device: torch.device, precision: str) -> float:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    log.info("measuring the matmul peak on %s (%s, a few seconds)", device, dtype)
    peak = matmul_peak(device, dtype)
    log.info("%s, %s: matmul peak %.1f GFLOP/s (%s)", device, precision, peak / 1e9, dtype)
    return peak


def build_runs(params, variants: list[Variant], context: int, batch, warmup: int, amp, device) -> dict[Variant, Run]:
    log.info("building the models%s", f", then --warmup {warmup} untimed steps of each" if warmup else "")
    runs = {}
    with _bar(len(variants), "build") as bar:
        for variant in variants:
            torch.manual_seed(0)
            model = model_for(params, variant, context, device)
            step = trainer_step(model, variant_config(params, variant).train, batch, amp, device)
            figures = Figures(flops_per_token=flops_per_token(model, context), params=model.num_params())
            runs[variant] = Run(model, step, figures)
            if warmup:
                train_seconds(model, step, warmup, device)
                eval_seconds(model, batch, warmup, amp, device)
            bar.update()
    return runs


def time_round(runs: dict[Variant, Run], round_: int, rounds: int, batch, steps: int, amp, device) -> None:
    """Every variant's training, then every variant's evaluation, each round starting one variant later (A B C,
    B C A, ...): the first variant of a round follows the evaluations, and none should always be the one that does."""
    variants = list(runs)
    order = variants[round_ % len(variants) :] + variants[: round_ % len(variants)]
    tokens = batch[0].numel()
    log.info("round %d of %d: timing training, --steps %d of each variant", round_ + 1, rounds, steps)
    with _bar(len(order), f"round {round_ + 1}/{rounds} train") as bar:
        for variant in order:
            run = runs[variant]
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            run.figures.train_tokens_per_sec.append(tokens / train_seconds(run.model, run.step, steps, device))
            if device.type == "cuda":
                run.figures.peak_memory_mb = torch.cuda.max_memory_allocated(device) / 2**20
            bar.update()
    log.info("round %d of %d: timing evaluation", round_ + 1, rounds)
    with _bar(len(order), f"round {round_ + 1}/{rounds} eval") as bar:
        for variant in order:
            run = runs[variant]
            run.figures.eval_tokens_per_sec.append(tokens / eval_seconds(run.model, batch, steps, amp, device))
            bar.update()


def measure_cpu_memory(runs: dict[Variant, Run], params: dict, context: int, batch_size: int) -> None:
    log.info("peak memory: each variant in a process of its own (some seconds each)")
    with _bar(len(runs), "memory") as bar:
        for variant, run in runs.items():
            run.figures.peak_memory_mb = cpu_peak_memory_mb(params, variant, context, batch_size)
            bar.update()


def _profiles(runs: dict[Variant, Run], batch, amp, device) -> dict[str, tuple[str, dict[str, float]]]:
    """After the timings: the profiler's overhead falls on no figure."""
    profiles = {}
    for variant, run in runs.items():
        log.info("profiling %s: %d training steps under torch.profiler", variant.name, PROFILED_STEPS)
        profiles[variant.name] = profile_training(run.model, run.step, batch, device, PROFILED_STEPS)
    return profiles


def _generation(runs: dict[Variant, Run], n_tokens: int, device: torch.device) -> dict[str, float]:
    """KV-cached against uncached greedy generation of n_tokens from one token, native rope: the medians of five
    interleaved pairs (a cached run of 512 tokens at `small` takes under a second, and with two pairs the figure
    moved by 40% from one bench run to the next)."""
    rope = next((v for v in runs if v.impl == "native" and v.pos == hf_encoding()), None)
    if rope is None:
        log.info("generation: not timed, --pos names no rope (it times native rope's KV cache)")
        return {}
    model = runs[rope].model
    log.info("generation: %d tokens, greedy, with and without the KV cache, %d pairs", n_tokens, GENERATION_PAIRS)
    timings: dict[bool, list[float]] = {True: [], False: []}
    generate(model, [1], 8, temperature=0)  # warm-up
    with _bar(2 * GENERATION_PAIRS * n_tokens, "generate", unit="token") as bar:
        for _ in range(GENERATION_PAIRS):
            for use_cache in (True, False):
                timings[use_cache].append(generation_seconds(model, n_tokens, use_cache, device, bar))
    cached, uncached = statistics.median(timings[True]), statistics.median(timings[False])
    per_pair = [u / c for u, c in zip(timings[False], timings[True], strict=True)]  # the pairs are its rounds
    speedup = uncached / cached
    return {
        "tokens": n_tokens,
        "cached_s": cached,
        "uncached_s": uncached,
        "speedup": speedup,
        "speedup_spread": judge(speedup, per_pair, null=1.0),
    }


def generation_seconds(model: nn.Module, n_tokens: int, use_cache: bool, device: torch.device, bar: tqdm) -> float:
    _sync(device)
    started = time.perf_counter()
    for _ in stream_tokens(model, [1], n_tokens, temperature=0, use_cache=use_cache):
        bar.update()  # under a microsecond (it draws at most once a second) against a token's milliseconds
    _sync(device)
    return time.perf_counter() - started


# How a ratio or cost stands against its own spread across rounds, and its mark in the table.
def bench(out: Path, **settings: Any) -> dict[str, Any]:
    """Run the benchmark and write its JSON; the caller shows table(results)."""
    check_out(out)
    results = run_bench(**settings)
    write_json(out, results)
    log.info("wrote %s", out)
    return results
