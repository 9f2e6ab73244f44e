"""What every figure of the project shares, below the plot stage (plotting.py) and the report (report_figures.py):
a headless matplotlib, plain numbers on a log axis, and a PNG written whole or not at all."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, NullFormatter

from llama_pe.io import atomic_path


def plain_log_y(ax) -> None:
    """A log y axis labelled with plain numbers (296, not 2.96e2), its minor ticks too when it spans under a decade.

    Call it once the data is drawn: whether minor ticks are labelled depends on the range. matplotlib's
    ScalarFormatter would move a common offset out of the labels of a nearly flat curve (10001 to 10005 read "1.0"
    to "5.0"), and a log axis never shows that offset, so every value is written out in full.
    """
    ax.set_yscale("log")
    plain = FuncFormatter(lambda value, _position: f"{value:g}")
    ax.yaxis.set_major_formatter(plain)
    low, high = ax.get_ylim()
    ax.yaxis.set_minor_formatter(plain if high < 10 * low else NullFormatter())


def save_figure(fig, out: Path) -> Path:
    """The figure as a PNG at out (laid out tight unless it has a layout engine of its own), then closed."""
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out
