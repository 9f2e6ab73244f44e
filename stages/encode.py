"""Stage `encode`: tokenize the corpus and split it into {train,val,test}.bin with meta.json."""

import argparse
from pathlib import Path

from llama_pe.config import load_config
from llama_pe.data.encode import encode_splits, write_encoded
from llama_pe.data.tokenizer import load_tokenizer
from llama_pe.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder")
    parser.add_argument("--out", required=True, help="folder for the token files and meta.json")
    args = parser.parse_args()
    cfg = load_config(args.params).data
    sp = load_tokenizer(args.tokenizer)
    splits = encode_splits(Path(args.corpus).read_text(encoding="utf-8"), sp, cfg)
    write_encoded(splits, args.out, {"split": cfg.split, "vocab_size": sp.get_piece_size()})


if __name__ == "__main__":
    run_stage(main)
