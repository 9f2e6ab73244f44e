"""Stage `evaluate`: held-out loss, perplexity and bits per character, length extrapolation and samples."""

import argparse
from pathlib import Path

from llama_pe.core.evaluate import evaluate_checkpoint
from llama_pe.settings.config import load_config
from llama_pe.settings.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--checkpoint", required=True, help="the train stage's best checkpoint")
    parser.add_argument("--encoded", required=True, help="folder of the encode stage")
    parser.add_argument("--metrics", required=True, help="evaluation metrics JSON")
    parser.add_argument("--curve", required=True, help="extrapolation curve JSON, for dvc plots")
    parser.add_argument("--samples", required=True, help="text file of generated samples")
    parser.add_argument("--context-use", required=True, help="folder of the context-use curves, for dvc plots")
    args = parser.parse_args()
    evaluate_checkpoint(
        load_config(args.params),
        Path(args.checkpoint),
        Path(args.encoded),
        Path(args.metrics),
        Path(args.curve),
        Path(args.samples),
        Path(args.context_use),
    )


if __name__ == "__main__":
    run_stage(main)
