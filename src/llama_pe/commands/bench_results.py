"""The benchmark's results: each figure against its reference as a ratio, whether the spread of the rounds lets
it stand, and the table that prints them."""

from __future__ import annotations

import datetime
import platform
import statistics
import sys
from dataclasses import asdict
from typing import Any

import torch

from llama_pe.commands.bench_measure import Figures, Variant
from llama_pe.positions.catalogue import hf_encoding

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
