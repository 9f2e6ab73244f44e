"""Stage `download`: put the verified tiny Shakespeare corpus at --out (from $LLAMA_PE_MIRROR or data.url)."""

import argparse

from llama_pe.core.data.download import fetch_corpus
from llama_pe.settings.config import load_config
from llama_pe.settings.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, help="where the corpus goes")
    args = parser.parse_args()
    cfg = load_config(args.params).data
    fetch_corpus(cfg.url, cfg.sha256, args.out)


if __name__ == "__main__":
    run_stage(main)
