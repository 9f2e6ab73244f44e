"""The `llama-pe` command: tools around the pipeline's artefacts."""

from __future__ import annotations

import argparse

from llama_pe.stage import run_stage


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="llama-pe", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export-hf", help="write a rope checkpoint as a Hugging Face model folder")
    export.add_argument("checkpoint", help="checkpoint file written by the train stage")
    export.add_argument("out_dir", help="folder for config.json, model.safetensors and the tokenizer files")
    args = parser.parse_args(argv)

    def export_command() -> None:
        from llama_pe.export import export_hf  # transformers is slow to import; load it only when needed

        export_hf(args.checkpoint, args.out_dir)

    run_stage({"export-hf": export_command}[args.command])


if __name__ == "__main__":
    main()
