"""PNG figures of a run: the training curves and the extrapolation curve."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib.pyplot as plt

from llama_pe.errors import MissingInputError
from llama_pe.figures import plain_log_y, save_figure
from llama_pe.positions.rope_scaling import ROPE_SCALING_METHODS


def read_tsv(path: Path, column: str) -> dict[int, float]:
    """A DVCLive metric file as {step: value}."""
    if not path.is_file():
        raise MissingInputError(f"no training curve at {path}: run the `train` stage first (dvc repro train)")
    with open(path, newline="") as f:
        return {int(row["step"]): float(row[column]) for row in csv.DictReader(f, delimiter="\t")}


def run_label(pos: str, impl: str) -> str:
    """The encoding a run's figures are of, for their titles: `model.pos=rope`, `model.pos=rope, model.impl=hf`."""
    return f"model.pos={pos}" + ("" if impl == "native" else f", model.impl={impl}")


def training_figure(live_dir: Path, out: Path, label: str | None = None) -> None:
    metrics = live_dir / "plots" / "metrics"
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for split, style in (("train", dict(lw=1, alpha=0.8)), ("val", dict(marker="o", lw=1.5))):
        loss = read_tsv(metrics / split / "loss.tsv", "loss")
        tokens = read_tsv(metrics / split / "tokens.tsv", "tokens")
        ax.plot([tokens[s] for s in loss], list(loss.values()), label=f"{split} loss", **style)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(_titled("Training and validation loss", label))
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, out)


def extrapolation_figure(curve_file: Path, train_context: int, out: Path, label: str | None = None) -> None:
    if not curve_file.is_file():
        raise MissingInputError(f"no extrapolation curve at {curve_file}: run the `evaluate` stage first")
    rows = json.loads(curve_file.read_text())
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for mode, marker in (("nonoverlapping", "o"), ("sliding", "s")):
        points = [(r["context"], r[f"{mode}_ppl"]) for r in rows if r[f"{mode}_ppl"] is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker=marker, label=f"{mode} windows")
    for method in ROPE_SCALING_METHODS:  # a rope run's scaled scores; null for other encodings
        points = [(r["context"], r[f"{method}_ppl"]) for r in rows if r.get(f"{method}_ppl") is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker=".", linestyle=":", label=f"rope + {method} scaling")
    missing = [r for r in rows if r.get("reason")]
    if missing:  # the evaluate stage's reason, such as a learned table's length
        contexts = ", ".join(str(r["context"]) for r in missing)
        ax.text(
            0.02, 0.02, f"no value at {contexts}: {missing[0]['reason']}", transform=ax.transAxes, fontsize=8, wrap=True
        )
    ax.axvline(train_context, color="grey", linestyle="--", label=f"training context ({train_context})")
    ax.set_xscale("log", base=2)
    ax.set_xticks([r["context"] for r in rows], [str(r["context"]) for r in rows])
    plain_log_y(ax)
    ax.set_xlabel("evaluation context (tokens)")
    ax.set_ylabel("test perplexity")
    ax.set_title(_titled("Length extrapolation", label))
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    save_figure(fig, out)


def _titled(title: str, label: str | None) -> str:
    return f"{title}: {label}" if label else title
