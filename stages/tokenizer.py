"""Stage `tokenizer`: train SentencePiece on the training text; write the model and metrics/tokenizer.json."""

import argparse
from pathlib import Path

from llama_pe.core.data.split import tokenizer_training_text
from llama_pe.core.data.tokenizer import load_tokenizer, save_tokenizer, tokenizer_stats, train_tokenizer
from llama_pe.io import write_json
from llama_pe.settings.config import load_config
from llama_pe.settings.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--out", required=True, help="tokenizer folder")
    parser.add_argument("--metrics", required=True, help="tokenizer metrics JSON")
    args = parser.parse_args()
    cfg = load_config(args.params)
    text = Path(args.corpus).read_text(encoding="utf-8")
    model = train_tokenizer(tokenizer_training_text(text, cfg.data), cfg.tokenizer)
    save_tokenizer(model, args.out)
    write_json(args.metrics, tokenizer_stats(load_tokenizer(args.out), text))


if __name__ == "__main__":
    run_stage(main)
