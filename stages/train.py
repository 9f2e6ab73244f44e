"""Stage `train`: train the model that params.yaml describes; resume the last checkpoint when it matches."""

import argparse
import sys
from pathlib import Path

from llama_pe.core import distributed
from llama_pe.core.train import Paths, train
from llama_pe.settings.config import load_config
from llama_pe.settings.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--encoded", required=True, help="folder of the encode stage")
    parser.add_argument("--tokenizer", required=True, help="folder of the tokenizer stage")
    parser.add_argument("--best", required=True, help="checkpoint of the best validation loss")
    parser.add_argument("--last", required=True, help="checkpoint to resume from")
    parser.add_argument("--metrics", required=True, help="training metrics JSON")
    parser.add_argument("--live", required=True, help="DVCLive folder for the step-wise curves")
    args = parser.parse_args()
    paths = Paths(*(Path(p) for p in (args.encoded, args.tokenizer, args.best, args.last, args.metrics, args.live)))
    cfg = load_config(args.params)
    if cfg.train.nproc > 1 and not distributed.launched_by_torchrun():
        distributed.relaunch_under_torchrun(cfg.train.nproc, sys.argv)  # this script again, once per process
    try:
        train(cfg, paths)
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    # The --last checkpoint is saved at every validation (train.eval_interval steps), so that is where it resumes.
    run_stage(main, interrupted="interrupted; `dvc repro` resumes training from the last validation's checkpoint")
