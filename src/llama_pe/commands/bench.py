"""`llama-pe bench`: speed, memory and MFU of every encoding and of Hugging Face's Llama, measured side by side.

Everything is measured in one process and interleaved (A B C, B C A, ..., after a warm-up), and each figure is
the median over rounds, so that the machine's drift and noise fall on every variant alike. Each ratio and cost is
also taken round by round, and marked where that spread exceeds it (see judge). MFU is the achieved
FLOP/s (nanoGPT's estimate: 6 N + 12 L H Q T per token, N the parameters that multiply) over the peak of a
large matrix multiply measured in the same run (fp32 on a CPU, bf16 on a GPU). A benchmark measures; it asserts
nothing (the figures of record are in benchmarks/README.md).
"""

from __future__ import annotations

import copy
import datetime
import logging
import multiprocessing
import platform
import resource
import statistics
import sys
import tempfile
import time
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from llama_pe.core.device import autocast, resolve_device, resolve_precision
from llama_pe.core.generate import generate, stream_tokens
from llama_pe.core.model import build_model, model_args_from_config
from llama_pe.core.train import make_optimizer, train_step
from llama_pe.errors import ConfigError
from llama_pe.io import write_json
from llama_pe.positions.catalogue import encoding, hf_encoding
from llama_pe.settings.config import SIZES, Config, TrainConfig, config_from_dict
from llama_pe.settings.yaml12 import load_yaml

log = logging.getLogger(__name__)

VOCAB = 8192  # the default tokenizer's
PROFILED_STEPS = 3
GENERATION_PAIRS = 5


@dataclass(frozen=True)
class Variant:
    impl: str
    pos: str
    dropout: float

    @property
    def name(self) -> str:
        return f"{self.pos} {self.impl} dropout {self.dropout:g}"


@dataclass
class Figures:
    train_tokens_per_sec: list[float] = field(default_factory=list)
    eval_tokens_per_sec: list[float] = field(default_factory=list)
    peak_memory_mb: float | None = None
    flops_per_token: float = 0.0
    params: int = 0


@dataclass
class Run:
    """One variant's model, its training step (the trainer's own, with its optimizer) and figures, kept across
    the rounds."""

    model: nn.Module
    step: Callable[[], float]
    figures: Figures


class FixedBatch:
    """The trainer's batch sampler, drawing the same batch every time: a benchmark times steps, not data."""

    def __init__(self, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.batch = batch

    def next(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batch


def trainer_step(model: nn.Module, cfg: TrainConfig, batch, amp, device: torch.device) -> Callable[[], float]:
    """llama_pe.core.train.train_step as `dvc repro` runs it (its AdamW groups, clipping, accumulation), at peak lr."""
    optimizer = make_optimizer(model, cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=False)  # fp16 is refused on a CPU, and bench has no loss scale
    sampler = FixedBatch(batch)
    return lambda: train_step(model, optimizer, scaler, sampler, cfg, cfg.lr, device, amp)


def variant_config(params: dict[str, Any], variant: Variant) -> Config:
    params = copy.deepcopy(params)
    params["model"].update(impl=variant.impl, pos=variant.pos, dropout=variant.dropout)
    return config_from_dict(params)  # the same checks as the pipeline's


def model_for(params: dict[str, Any], variant: Variant, context: int, device: torch.device) -> nn.Module:
    cfg = variant_config(params, variant)
    return build_model(model_args_from_config(cfg.model, vocab_size=VOCAB, context=context)).to(device)


def flops_per_token(model: nn.Module, context: int) -> float:
    """nanoGPT's estimate_mfu: 6 N (forward and backward of every weight that multiplies) plus attention."""
    weights = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear)}  # tied: once
    args = model.args
    head_dim = args.dim // args.n_heads
    return 6 * sum(weights.values()) + 12 * args.n_layers * args.n_heads * head_dim * context


def matmul_peak(device: torch.device, dtype: torch.dtype, rounds: int = 5) -> float:
    """FLOP/s of a large square matrix multiply: the machine's practical peak for this dtype."""
    n = 4096 if device.type == "cuda" else 1536
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    timings = []
    for _ in range(rounds + 1):
        _sync(device)
        started = time.perf_counter()
        for _ in range(4):
            a @ b
        _sync(device)
        timings.append((time.perf_counter() - started) / 4)
    return 2 * n**3 / statistics.median(timings[1:])  # the first is a warm-up


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def seconds_per_call(step, steps: int, device: torch.device) -> float:
    """Wall seconds of one call of step(), averaged over `steps` calls, the device's queue drained at both ends."""
    _sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - started) / steps


def train_seconds(model: nn.Module, step: Callable[[], float], steps: int, device) -> float:
    """Seconds per training step (the trainer's: forward, backward, clipping, AdamW), averaged over `steps` steps."""
    model.train()
    return seconds_per_call(step, steps, device)


@torch.no_grad()
def eval_seconds(model, batch, steps: int, amp, device) -> float:
    model.eval()
    x, y = batch

    def step() -> None:
        with amp:
            model(x, y)

    return seconds_per_call(step, steps, device)


# The dense matrix multiplies of the linear layers (the 6 N of the FLOP estimate); attention kernels are apart.
GEMM_OPS = ("aten::mm", "aten::addmm", "aten::addmm_")


def profile_training(model, step, batch, device, steps: int = PROFILED_STEPS) -> tuple[str, dict[str, float]]:
    """torch.profiler over `steps` training steps: the table of the costliest ops, and where the time went.

    gemm_share: the share of the profiled op time spent in the linear layers' matrix multiplies; gemm_efficiency:
    their achieved FLOP/s (6 N per token) over the square-matmul peak is given by the caller. The rest of a step
    (softmax, attention, norms, dropout, optimizer) is what an MFU short of the GEMMs' own efficiency pays for.
    """
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        seconds = train_seconds(model, step, steps, device)
    events = prof.key_averages()
    own = "self_device_time_total" if cuda else "self_cpu_time_total"
    total = sum(getattr(e, own) for e in events)
    gemm = sum(getattr(e, own) for e in events if e.key in GEMM_OPS)
    weights = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear)}
    gemm_flops = 6 * sum(weights.values()) * batch[0].numel() * steps
    table = events.table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=18)
    summary = {"step_s": seconds, "gemm_share": gemm / total, "gemm_flops_per_sec": gemm_flops / (gemm / 1e6)}
    return table, summary


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_rss_mb(params: dict, variant: Variant, context: int, batch_size: int, queue) -> None:
    """In a child process: how far resident memory rises above its level before the model, over two steps."""
    import threading

    import llama_pe.core.model.hf  # noqa: F401  (transformers: its memory is counted before, not as the model's)

    torch.manual_seed(0)
    batch = torch.randint(VOCAB, (2, batch_size, context)).unbind(0)
    before, peak, done = _rss_mb(), [0.0], threading.Event()

    def sample() -> None:  # the peak inside a step (activations) is gone by its end: sample every millisecond
        while not done.wait(0.001):
            peak[0] = max(peak[0], _rss_mb())

    sampler = threading.Thread(target=sample)
    sampler.start()
    model = model_for(params, variant, context, torch.device("cpu"))
    cpu = torch.device("cpu")
    step = trainer_step(model, variant_config(params, variant).train, batch, torch.autocast("cpu", enabled=False), cpu)
    train_seconds(model, step, 2, cpu)
    done.set()
    sampler.join()
    queue.put(max(peak[0], _rss_mb()) - before)


def cpu_peak_memory_mb(params: dict, variant: Variant, context: int, batch_size: int) -> float | None:
    """A CPU has no per-model allocator statistics: each variant's peak is measured in a process of its own (Linux)."""
    if not Path("/proc/self/statm").exists():
        return None
    context_ = multiprocessing.get_context("spawn")
    queue = context_.Queue()
    child = context_.Process(target=_peak_rss_mb, args=(params, variant, context, batch_size, queue))
    child.start()
    peak = queue.get(timeout=600)
    child.join()
    return peak


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
MARKS = {"holds": "", "itself": "", "noise": "~", "unmeasured": "?"}
MFU_MARK = "!"  # an MFU above 100%: the peak it divides by was measured low


def judge(value: float, per_round: list[float], null: float) -> dict[str, Any]:
    """A figure's spread across rounds (max - min of its per-round values) against its effect, its distance from
    `null` (1 for a ratio, 0 for a cost): "noise" where the spread exceeds it, "unmeasured" with one round."""
    if len(per_round) < 2:
        return {"per_round": per_round, "spread": None, "verdict": "unmeasured"}
    spread = max(per_round) - min(per_round)
    return {"per_round": per_round, "spread": spread, "verdict": "noise" if spread > abs(value - null) else "holds"}


def versus(values: list[float], reference: list[float]) -> tuple[float, dict[str, Any]]:
    """The ratio of two medians, judged by the same ratio round by round: the rounds interleave the variants, so
    round i of one was timed beside round i of the other and the machine's drift between rounds cancels."""
    per_round = [v / r for v, r in zip(values, reference, strict=True)]
    ratio = statistics.median(values) / statistics.median(reference)
    if values is reference:  # a row against itself is 1× by definition: nothing to verify, even in one round
        return ratio, {"per_round": per_round, "spread": 0.0, "verdict": "itself"}
    return ratio, judge(ratio, per_round, null=1.0)


def _ratio_columns(fig: Figures, hf: Figures | None, rope: Figures | None) -> dict[str, Any]:
    """The table's ratio columns (None without the reference), each with its `_spread` beside it."""
    pairs = {
        "train_vs_hf": (fig.train_tokens_per_sec, hf.train_tokens_per_sec if hf else None),
        "train_vs_rope": (fig.train_tokens_per_sec, rope.train_tokens_per_sec if rope else None),
        "eval_vs_hf": (fig.eval_tokens_per_sec, hf.eval_tokens_per_sec if hf else None),
    }
    columns: dict[str, Any] = {}
    for name, (values, reference) in pairs.items():
        ratio, spread = versus(values, reference) if reference else (None, None)
        columns |= {name: ratio, f"{name}_spread": spread}
    return columns


def _dropout_costs(variants, figures) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """The share of the dropout-0 training speed each dropout > 0 variant loses, and its spread across rounds."""
    costs, spreads = {}, {}
    for variant in variants:
        zero = figures.get(Variant(variant.impl, variant.pos, 0.0))
        if variant.dropout > 0 and zero:
            ratio, against_zero = versus(figures[variant].train_tokens_per_sec, zero.train_tokens_per_sec)
            costs[variant.name] = 1 - ratio
            spreads[variant.name] = judge(1 - ratio, [1 - r for r in against_zero["per_round"]], null=0.0)
    return costs, spreads


def _results(variants, figures, peak, device, precision, generation, settings) -> dict[str, Any]:
    rows = []
    reference = {v.dropout: figures[v] for v in variants if v.impl == "hf"}
    rope = {v.dropout: figures[v] for v in variants if v.impl == "native" and v.pos == hf_encoding()}
    for variant in variants:
        fig = figures[variant]
        train = statistics.median(fig.train_tokens_per_sec)
        rows.append(
            {
                **asdict(variant),
                "params": fig.params,
                "train_tokens_per_sec": train,
                "eval_tokens_per_sec": statistics.median(fig.eval_tokens_per_sec),
                "peak_memory_mb": fig.peak_memory_mb,
                "mfu": train * fig.flops_per_token / peak,
                **_ratio_columns(fig, reference.get(variant.dropout), rope.get(variant.dropout)),
            }
        )
    dropout_cost, dropout_cost_spread = _dropout_costs(variants, figures)
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["llama-pe", *sys.argv[1:]]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": torch.get_num_threads(),
            "device": _device_name(device),
        },
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "precision": precision,
        "matmul_peak_flops": peak,
        "settings": settings,
        "rows": rows,
        "dropout_cost": dropout_cost,
        "dropout_cost_spread": dropout_cost_spread,
        "generation": generation,
    }


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def table(results: dict[str, Any]) -> str:
    """The results as a Markdown table, for the terminal and benchmarks/README.md."""

    def ratio(row: dict[str, Any], name: str) -> str:
        return "-" if row[name] is None else f"{row[name]:.2f}×{_mark(row[f'{name}_spread'])}"

    lines = [
        f"{results['machine']['device']}, {results['precision']}, torch {results['versions']['torch']}, "
        f"matmul peak {results['matmul_peak_flops'] / 1e9:.1f} GFLOP/s; {results['settings']}",
        "",
        "| variant | params | train tok/s | vs HF* | vs rope* | MFU | eval tok/s | eval vs HF* | peak MiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines.insert(2, "(*: against the row of the same dropout)\n")
    for row in results["rows"]:
        memory = "-" if row["peak_memory_mb"] is None else f"{row['peak_memory_mb']:.0f}"
        lines.append(
            f"| {row['pos']} {row['impl']} dropout {row['dropout']:g} | {row['params']:,} | "
            f"{row['train_tokens_per_sec']:,.0f} | {ratio(row, 'train_vs_hf')} | {ratio(row, 'train_vs_rope')} | "
            f"{row['mfu']:.0%}{MFU_MARK if row['mfu'] > 1 else ''} | {row['eval_tokens_per_sec']:,.0f} | "
            f"{ratio(row, 'eval_vs_hf')} | {memory} |"
        )
    if results["dropout_cost"]:
        spreads = results["dropout_cost_spread"]
        lines.append(
            "\ndropout cost (share of the dropout-0 training speed lost): "
            + ", ".join(f"{name}: {cost:.1%}{_mark(spreads[name])}" for name, cost in results["dropout_cost"].items())
        )
    if results["generation"]:
        g = results["generation"]
        lines.append(
            f"\ngeneration of {g['tokens']} tokens (native rope, greedy): cached {g['cached_s']:.2f} s, "
            f"uncached {g['uncached_s']:.2f} s: {g['speedup']:.1f}×{_mark(g['speedup_spread'])} faster with the "
            "KV cache"
        )
    lines += _legend(results)
    profiled = [row for row in results["rows"] if "profile" in row]
    if profiled:
        lines += [
            "",
            "torch.profiler, training steps (the tables are in the JSON):",
            "",
            "| variant | share of op time in the linear layers' GEMMs | their FLOP/s / matmul peak |",
            "| --- | --- | --- |",
        ]
        for row in profiled:
            p = row["profile"]
            lines.append(
                f"| {row['pos']} {row['impl']} dropout {row['dropout']:g} | {p['gemm_share']:.0%} | "
                f"{p['gemm_efficiency']:.0%} |"
            )
    return "\n".join(lines)


def _mark(spread: dict[str, Any] | None) -> str:
    return "" if spread is None else MARKS[spread["verdict"]]


def _legend(results: dict[str, Any]) -> list[str]:
    """A line for each mark the table shows: what it means and how to get a firmer figure."""
    spreads = [value for row in results["rows"] for key, value in row.items() if key.endswith("_spread")]
    spreads += [*results["dropout_cost_spread"].values(), results["generation"].get("speedup_spread")]
    shown = {spread["verdict"] for spread in spreads if spread}
    legend = {
        "noise": f"{MARKS['noise']}: noise: this figure's spread across rounds (max - min of its per-round values, in "
        "the JSON) exceeds its distance from 1× (for a cost, the cost itself); more --rounds or --steps (generation: "
        "--generate-tokens) give a firmer figure",
        "unmeasured": f"{MARKS['unmeasured']}: unverified: one round measures no spread; use --rounds 3 or more",
    }
    lines = [line for verdict, line in legend.items() if verdict in shown]
    if any(row["mfu"] > 1 for row in results["rows"]):
        lines.append(
            f"{MFU_MARK}: above the matmul peak measured in this run, which other load on the machine lowered while "
            "it was measured: no MFU of this run holds; rerun on a quiet machine"
        )
    return ["", *lines] if lines else []


def bench(out: Path, **settings: Any) -> dict[str, Any]:
    """Run the benchmark and write its JSON; the caller shows table(results)."""
    check_out(out)
    results = run_bench(**settings)
    write_json(out, results)
    log.info("wrote %s", out)
    return results
