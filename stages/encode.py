"""Stage `encode`: tokenize the corpus and split it into {train,val,test}.bin with meta.json."""

import argparse

from llama_pe.core.data.encode import encode_corpus
from llama_pe.settings.config import load_config
from llama_pe.settings.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder")
    parser.add_argument("--out", required=True, help="folder for the token files and meta.json")
    args = parser.parse_args()
    encode_corpus(args.corpus, args.tokenizer, args.out, load_config(args.params))


if __name__ == "__main__":
    run_stage(main)
