"""Device and precision: what training, evaluation and benchmarks run on, resolved from train.device and
train.precision."""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path

import torch

from llama_pe.errors import ConfigError

# Devices with a fused AdamW kernel (one pass over all parameters instead of a dozen foreach kernels).
FUSED_ADAMW_DEVICES = ("cuda", "cpu")


def resolve_device(name: str, setting: str = "train.device") -> torch.device:
    """`setting` is the name the user gave it by (a params key or a command's option), for the message."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{setting}: cuda was asked for, but PyTorch sees no CUDA GPU; use auto or cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{setting}: mps was asked for, but PyTorch sees no Apple GPU; use auto or cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device, setting: str = "train.precision") -> str:
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp16" if device.type == "cuda" else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ConfigError(f"{setting}: fp16 needs a CUDA GPU (device is {device.type}); use bf16 or fp32")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{setting}: this GPU has no bf16; use fp16 or fp32")
    return name


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# On a CPU, long windows score faster a few at a time, their activations staying in cache: 8 windows of 512 tokens
# at a time took 6.2 s where 32 took 8.8 s (the default model's test split, sliding). A GPU wants large batches.
CPU_TOKENS_PER_BATCH = 4096


def windows_per_batch(batch_size: int, length: int, device: torch.device) -> int:
    """eval.batch_size windows of `length` tokens, fewer on a CPU where they would pass CPU_TOKENS_PER_BATCH."""
    if device.type != "cpu":
        return batch_size
    return max(1, min(batch_size, CPU_TOKENS_PER_BATCH // length))


# ---------------------------------------------------------------------------------------------- the machine
# Different CPU models round differently (the same code gives test perplexity 292.8 on one and 294.1 on another), so
# every result records what it ran on: the train stage writes both into metrics/train.json, the ledger keeps them.


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name as Linux names it ("AMD EPYC 7B13"), else what the platform says ("arm", "x86_64")."""
    try:
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass  # not Linux: no /proc
    return platform.processor() or platform.machine() or "unknown"


def cpu_signature(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's generation, which its model name may not tell: "AMD EPYC" is the name of EPYCs of family 25 and of
    family 26, whose float results differ. Linux's family, model and stepping numbers; else the platform's name."""
    fields: dict[str, str] = {}
    try:
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.strip():
                break  # the first processor's block is enough: every core of a machine is one generation
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass  # not Linux: no /proc
    if "cpu family" in fields:  # x86
        return f"{fields.get('vendor_id', 'x86')} family {fields['cpu family']} model {fields.get('model', '?')} " + (
            f"stepping {fields.get('stepping', '?')}"
        )
    if "CPU implementer" in fields:  # Arm's numbers for the core
        return f"arm implementer {fields['CPU implementer']} part {fields.get('CPU part', '?')}"
    return platform.platform()


def cpu_identity() -> dict[str, str | int]:
    """What tells two CPUs' float results apart: the model name, the generation (cpu_signature), the vector ISA
    torch's kernels use (AVX2 or AVX512 on x86) and the compute threads (they split a matmul's sums)."""
    return {
        "cpu": cpu_model(),
        "cpu_signature": cpu_signature(),
        "cpu_isa": torch.backends.cpu.get_cpu_capability(),
        "cpu_threads": torch.get_num_threads(),
    }


def accelerator_name(device: torch.device) -> str | None:
    """The GPU a run used ("NVIDIA H200"); None on a CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple GPU (mps)"  # PyTorch has no name for it
    return None
