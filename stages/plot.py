"""Stage `plot`: draw the training curves and the extrapolation curve as PNG figures."""

import argparse
from pathlib import Path

from llama_pe.core.plotting import extrapolation_figure, run_label, training_figure
from llama_pe.settings.config import load_config
from llama_pe.settings.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--live", required=True, help="DVCLive folder of the train stage")
    parser.add_argument("--curve", required=True, help="extrapolation curve JSON of the evaluate stage")
    parser.add_argument("--out", required=True, help="folder for the PNG figures")
    args = parser.parse_args()
    out = Path(args.out)
    cfg = load_config(args.params)
    label = run_label(cfg.model.pos, cfg.model.impl)  # the titles name the encoding
    training_figure(Path(args.live), out / "training.png", label)
    extrapolation_figure(Path(args.curve), cfg.train.context, out / "extrapolation.png", label)


if __name__ == "__main__":
    run_stage(main)
