"""The report's figures: one line (or bar) per group, with the spread over seeds drawn around it."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from llama_pe.analysis.experiments import CONTEXT_METRIC, SCALING, context_multiple
from llama_pe.analysis.grouping import iter_groups, short_label
from llama_pe.analysis.statistics import t_interval
from llama_pe.figures import plain_log_y, save_figure
from llama_pe.positions.rope_scaling import ROPE_SCALING_METHODS

BAND = "mean ± std over seeds"


# A scaled evaluation is drawn in its run's colour, with a line style and marker of its own: one colour per
# trained model. The methods take these styles in the registry's order (repeating past the fourth).
METHOD_STYLES = (
    {"linestyle": ":", "marker": "v"},
    {"linestyle": "--", "marker": "s"},
    {"linestyle": "-.", "marker": "^"},
    {"linestyle": (0, (3, 1, 1, 1, 1, 1)), "marker": "D"},
)
SCALING_STYLES = {
    "none": {"linestyle": "-", "marker": "o"},
    **dict(zip(ROPE_SCALING_METHODS, itertools.cycle(METHOD_STYLES))),
}
TRAIN_CONTEXT_LINE = {"color": "black", "linestyle": (0, (1, 4)), "lw": 1}


def extrapolation(frame: pd.DataFrame, keys: list[str], out: Path) -> Path:
    """Test perplexity against evaluation context, non-overlapping and sliding windows side by side."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), dpi=120, sharey=True, layout="constrained")
    styles = group_styles(frame, keys)
    contexts = set()
    for ax, mode, title in ((axes[0], "", "non-overlapping windows"), (axes[1], "sliding_", "sliding windows")):
        for label, group in iter_groups(frame, keys):
            points = _context_points(group, mode)
            if group.iloc[0].get(SCALING, "none") != "none":
                # Up to the training context a scaled evaluation is its run's (every method is the identity there):
                # it starts at 1x, where it leaves the unscaled line.
                points = points[points["context"] >= float(group["train.context"].iloc[0])]
            if points.empty:
                continue
            contexts |= set(points["context"])
            style = styles[label]
            ax.plot(points["context"], points["mean"], markersize=4, **style, label=short_label(group.iloc[0], keys))
            ax.fill_between(points["context"], points["low"], points["high"], color=style["color"], alpha=0.12)
        for train_context in sorted(frame["train.context"].unique()):
            ax.axvline(train_context, **TRAIN_CONTEXT_LINE)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("evaluation context (tokens); black dots: training context")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
    ticks = sorted(contexts)
    for ax in axes:
        plain_log_y(ax)
        ax.set_xticks(ticks, [f"{c:g}" for c in ticks])
    axes[0].set_ylabel(f"test perplexity ({BAND})")
    figure_legend(fig, axes)
    fig.suptitle(f"Length extrapolation ({seeds_note(group_sizes(frame, keys), 'band')})")
    return save_figure(fig, out)


def group_styles(frame: pd.DataFrame, keys: list[str]) -> dict[str, dict[str, object]]:
    """Each group's colour, line style and marker: a colour per trained model (every key but the scaling method, so
    that rope and its scaled evaluations share one), a line style and marker per scaling method; colours repeat
    only past 20."""
    trained_keys = [key for key in keys if key != SCALING]
    labels, models = {}, {}
    for label, group in iter_groups(frame, keys):
        labels[label] = (short_label(group.iloc[0], trained_keys), group.iloc[0].get(SCALING, "none"))
        models.setdefault(labels[label][0], len(models))
    palette = plt.get_cmap("tab10" if len(models) <= 10 else "tab20")
    return {
        label: {"color": palette(models[model] % palette.N), **SCALING_STYLES.get(scaling, METHOD_STYLES[0])}
        for label, (model, scaling) in labels.items()
    }


def _context_points(group: pd.DataFrame, mode: str) -> pd.DataFrame:
    """The group's mean and band at each evaluation context; a context with no value in any run is left out."""
    rows = []
    for column in group.columns:
        match = CONTEXT_METRIC.match(column)
        if not match or bool(match["mode"]) != bool(mode):
            continue
        values = group[column].dropna().astype(float).to_numpy()  # learned past its table: null, left out
        if len(values) == 0:
            continue
        multiple = context_multiple(column)
        mean, std = float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        context = multiple * float(group["train.context"].iloc[0])
        rows.append({"context": context, "mean": mean, "low": mean - std, "high": mean + std})
    return pd.DataFrame(rows, columns=["context", "mean", "low", "high"]).sort_values("context")


def val_curves(frame: pd.DataFrame, keys: list[str], curves: pd.DataFrame, out: Path) -> Path:
    """Validation loss against tokens seen, each group's mean over seeds with its spread."""
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for _label, group in iter_groups(frame, keys):
        runs = curves[curves["name"].isin(group["name"])]
        if runs.empty:
            continue
        by_tokens = runs.groupby("tokens")["loss"].agg(["mean", "std", "count"]).reset_index()
        spread = by_tokens["std"].where(by_tokens["count"] > 1, 0.0)
        line = ax.plot(by_tokens["tokens"], by_tokens["mean"], marker=".", label=short_label(group.iloc[0], keys))
        ax.fill_between(
            by_tokens["tokens"],
            by_tokens["mean"] - spread,
            by_tokens["mean"] + spread,
            color=line[0].get_color(),
            alpha=0.2,
        )
    ax.set_xlabel("tokens seen")
    ax.set_ylabel(f"validation loss, nats per token ({BAND})")
    ax.set_title(f"Validation loss during training ({seeds_note(group_sizes(frame, keys), 'band')})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out)


def bits_per_character(frame: pd.DataFrame, keys: list[str], out: Path) -> Path:
    """Held-out (val ∪ test) bits per character per group: the mean, its 95% interval and each seed's run."""
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    labels = []
    for index, (_, group) in enumerate(iter_groups(frame, keys)):
        values = group["holdout_bpc"].dropna().astype(float).to_numpy()
        mean, _, half = t_interval(values)
        ax.errorbar(index, mean, yerr=None if np.isnan(half) else half, fmt="o", markersize=8, capsize=8)
        ax.scatter(np.full(len(values), index + 0.15), values, color="black", s=10, zorder=3)
        ax.annotate(f"{mean:.3f}", (index, mean), textcoords="offset points", xytext=(-10, 0), ha="right", fontsize=8)
        labels.append(short_label(group.iloc[0], keys))
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.set_ylabel("held-out bits per character")
    sizes = group_sizes(frame, keys)
    interval = "mean with 95% t interval, " if max(sizes) > 1 else ""  # t needs two runs
    ax.set_title(
        f"Held-out bits per character\n({interval}{seeds_note(sizes, 'interval')}; small dots: seeds)", fontsize=10
    )
    ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, out)


BAND_LOSS = re.compile(r"band_loss_(?P<low>\d+(?:p\d+)?)to(?P<high>\d+(?:p\d+)?)x$")
COPY_GAIN = re.compile(r"copy_gain_(?P<kind>text|random)_at_(?P<multiple>\d+(?:p\d+)?)x$")


def has_context_use(frame: pd.DataFrame) -> bool:
    """Whether any run recorded a band loss or a copy gain (the evaluate stage's diagnostics)."""
    return any((BAND_LOSS.match(c) or COPY_GAIN.match(c)) and frame[c].notna().any() for c in frame.columns)


def context_use(frame: pd.DataFrame, keys: list[str], out: Path) -> Path:
    """Does a model use its context? Test loss by band of window positions (left) and the copy probe's retrieval
    gain by distance, text and random spans (middle, right): each group's mean over seeds with its spread."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 5), dpi=120, layout="constrained")
    styles = group_styles(frame, keys)
    band_columns = sorted((c for c in frame.columns if BAND_LOSS.match(c)), key=_band_low)
    panels = (
        (axes[0], band_columns, _band_middle, "test loss, nats per token", "loss by window position", "position"),
        *(
            (
                ax,
                sorted((c for c in frame.columns if (m := COPY_GAIN.match(c)) and m["kind"] == kind), key=_copy_at),
                _copy_at,
                "second copy's loss minus the control's, nats (< 0: it copies)",
                f"retrieval by distance, {kind} spans",
                "distance between the copies",
            )
            for ax, kind in ((axes[1], "text"), (axes[2], "random"))
        ),
    )
    for ax, columns, position, ylabel, title, xlabel in panels:
        for label, group in iter_groups(frame, keys):
            rows = []
            for column in columns:
                values = group[column].dropna().astype(float).to_numpy()
                if len(values):
                    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
                    rows.append((position(column), float(np.mean(values)), std))
            if not rows:
                continue
            x, mean, std = (np.array(v) for v in zip(*rows, strict=True))
            style = styles[label]
            ax.plot(x, mean, markersize=4, **style, label=short_label(group.iloc[0], keys))
            ax.fill_between(x, mean - std, mean + std, color=style["color"], alpha=0.12)
        ax.axvline(1, **TRAIN_CONTEXT_LINE)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"{xlabel}, multiples of the training context L (dotted: L)", fontsize=9)
        ax.set_ylabel(f"{ylabel} ({BAND})", fontsize=8)
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
    for ax in axes[1:]:
        ax.axhline(0, color="grey", lw=0.8)
    figure_legend(fig, axes)
    fig.suptitle(f"Context use on the test split ({seeds_note(group_sizes(frame, keys), 'band')})")
    return save_figure(fig, out)


def figure_legend(fig: plt.Figure, axes: Iterable[plt.Axes]) -> None:
    """One legend for the figure with every panel's groups, once each: a panel can lack a group that another has
    (a learned table has retrieval within L, but no window of 8L for the loss by position)."""
    legend = {label: handle for ax in axes for handle, label in zip(*ax.get_legend_handles_labels(), strict=True)}
    fig.legend(legend.values(), legend.keys(), loc="outside right upper", fontsize=8)


def _multiple(text: str) -> float:
    return float(text.replace("p", "."))


def _band_low(column: str) -> float:
    return _multiple(BAND_LOSS.match(column)["low"])


def _band_middle(column: str) -> float:
    """A band's geometric middle ([L, 2L) at sqrt(2) L); the first band [0, L) at L/2."""
    match = BAND_LOSS.match(column)
    low, high = _multiple(match["low"]), _multiple(match["high"])
    return float(np.sqrt(low * high)) if low > 0 else high / 2


def _copy_at(column: str) -> float:
    return _multiple(COPY_GAIN.match(column)["multiple"])


def group_sizes(frame: pd.DataFrame, keys: list[str]) -> list[int]:
    return [len(group) for _, group in iter_groups(frame, keys)]


def seeds_note(sizes: list[int], spread: str) -> str:
    """The runs behind each group's mean, for a title: `n = 3 seeds per group`, `n = 1, no interval`."""
    low, high = min(sizes), max(sizes)
    if high < 2:
        return f"n = 1, no {spread}"
    if low == high:
        return f"n = {low} seeds per group"
    return f"n = {low} to {high} seeds per group" + (f", no {spread} where n = 1" if low < 2 else "")
