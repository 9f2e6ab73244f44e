"""What one measurement of the benchmark is: the variants, their fixed batch, and the timers of training,
evaluation, generation and memory."""

from __future__ import annotations

import copy
import multiprocessing
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llama_pe.core.model import build_model, model_args_from_config
from llama_pe.core.optimizer import make_optimizer
from llama_pe.core.train import train_step
from llama_pe.settings.config import Config, TrainConfig, config_from_dict

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
