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
    report = commands.add_parser(
        "report", help="aggregate the experiments' seeds: means, intervals, paired differences"
    )
    report.add_argument("--all-commits", action="store_true", help="experiments of every commit, not only HEAD's")
    report.add_argument("--only", action="append", default=[], metavar="KEY=VALUE", help="keep matching experiments")
    report.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="the group the others are compared with (default: model.pos=rope, model.impl=native)",
    )
    report.add_argument("--out", default="reports", help="folder for runs.csv, summary.csv and comparison.md")
    args = parser.parse_args(argv)

    def export_command() -> None:
        from llama_pe.export import export_hf  # transformers is slow to import; load it only when needed

        export_hf(args.checkpoint, args.out_dir)

    def report_command() -> None:
        from llama_pe.report import report

        report(".", args.out, args.all_commits, args.only, args.baseline)

    run_stage({"export-hf": export_command, "report": report_command}[args.command])


if __name__ == "__main__":
    main()
