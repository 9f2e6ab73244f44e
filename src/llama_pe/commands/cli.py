"""The `llama-pe` command: tools around the pipeline's artefacts: compare the experiments (show), run a study on
DVC's queue and report it with statistics (study, report), talk to a model (generate), export it (export-hf), time
it (bench)."""

from __future__ import annotations

import argparse
import typing
from pathlib import Path

from llama_pe.metrics import DEFAULT_PRIMARY
from llama_pe.positions.catalogue import ENCODINGS
from llama_pe.settings.architecture import SIZES
from llama_pe.settings.config import TrainConfig
from llama_pe.settings.stage import run_stage


def _names(train_setting: str) -> str:
    """The values train.<setting> takes (a Literal in TrainConfig), for a help text."""
    return ", ".join(typing.get_args(typing.get_type_hints(TrainConfig)[train_setting]))


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows every default once: not None or an empty list (the help says what happens without the option),
    not a flag's (a flag is off unless given), not where the help text states it already."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        """A description is wrapped; an example line (indented by two spaces) is kept as it is, to copy."""
        return "\n".join(
            indent + line if line.startswith("  ") else super(HelpFormatter, self)._fill_text(line, width, indent)
            for line in text.splitlines()
        )

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default == [] or action.nargs == 0 or "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


PRIMARY_HELP = (
    "the primary endpoints, comma-separated metric names: the headline table and its verdicts "
    f"(default: {', '.join(DEFAULT_PRIMARY)})"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llama-pe",
        description=__doc__,
        formatter_class=HelpFormatter,
        epilog="example:\n  llama-pe show\n  llama-pe study --pos rope,alibi --seeds 0,1,2 --out reports/mine\n"
        "  llama-pe report --ledger reports/ledger.csv --out reports/again",
    )
    commands = parser.add_subparsers(dest="command", required=True, help="llama-pe COMMAND --help: its options")
    export = add_command(
        commands,
        "export-hf",
        "write a rope checkpoint as a Hugging Face model folder",
        "Write a rope checkpoint (native or HF) as a folder that transformers' AutoModelForCausalLM and "
        "AutoTokenizer load: config.json, model.safetensors and the tokenizer files. Other encodings have no "
        "Hugging Face equivalent and are refused.",
        "llama-pe export-hf models/best.pt hf-model/",
    )
    export.add_argument("checkpoint", help="checkpoint file written by the train stage")
    export.add_argument("out_dir", help="folder for config.json, model.safetensors and the tokenizer files")
    export.add_argument(
        "--force",
        action="store_true",
        help="replace out_dir when it exists and is not an empty folder (never one that holds the checkpoint)",
    )
    report = add_command(
        commands,
        "report",
        "aggregate the experiments' seeds: means, intervals, paired differences",
        "Group the experiments (DVC's, or a ledger's rows) by everything but train.seed, give each group's mean and "
        "95% interval per metric, and compare every group with the baseline seed by seed: a paired t-test, "
        "Holm-corrected within each metric. Writes runs.csv, summary.csv, comparison.md and figures to --out.",
        "llama-pe report --out reports/mine\n"
        "  llama-pe report --ledger reports/ledger.csv --select train.lr,train.pos_lr_scale "
        "--only train.max_steps=400 --out reports/again",
    )
    report.add_argument("--all-commits", action="store_true", help="experiments of every commit, not only HEAD's")
    report.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keep matching experiments, repeatable (default: all)",
    )
    report.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="the group the others are compared with (default: model.pos=rope, model.impl=native)",
    )
    report.add_argument(
        "--out", default="reports", help="folder for the tables (CSV, Markdown) and figures (default: %(default)s)"
    )
    report.add_argument("--force", action="store_true", help="overwrite files in --out that git tracks")
    report.add_argument("--primary", metavar="NAME,NAME,...", help=PRIMARY_HELP)
    report.add_argument(
        "--ledger",
        metavar="FILE",
        help="aggregate the runs of this ledger (llama-pe study writes reports/ledger.csv) instead of DVC's "
        "experiments: no experiment needs to be present, and no validation curves are drawn (default: DVC's "
        "experiments)",
    )
    report.add_argument(
        "--runs",
        metavar="FILE",
        help="aggregate the runs of a report's runs.csv (a committed study's record, such as reports/runs.csv) "
        "instead of DVC's experiments; no validation curves are drawn",
    )
    report.add_argument(
        "--select",
        metavar="KEY[,KEY]",
        help="report each group at the best value of these swept params by best_val_loss (validation only): ranked "
        "on the first seed, the first two seeds deciding where the best two are within 0.02 nats; the choice "
        "goes to selection.csv and comparison.md (default: none, every value is reported)",
    )
    study = add_command(
        commands,
        "study",
        "queue a grid of experiments on DVC's queue, wait for them and write the report",
        "Queue encodings x seeds x sweeps as DVC experiments (dvc exp run --queue), run DVC's queue, keep each "
        "finished run in the ledger (--out's ledger.csv unless --ledger names another), then write the report. "
        "What the ledger or an experiment already holds for this code is not trained again.",
        "llama-pe study --pos rope,alibi --seeds 0,1 -S model.size=tiny -S train.max_steps=20 --out reports/mine",
    )
    study.add_argument(
        "--pos",
        default="rope",
        help=f"encodings (model.pos), comma-separated: {', '.join(ENCODINGS)} (default: %(default)s)",
    )
    study.add_argument(
        "--hf",
        action="store_true",
        help="add transformers' LlamaForCausalLM (model.impl=hf, rope); with --pos '' it alone",
    )
    study.add_argument(
        "--seeds", default="0", help="train.seed values, comma-separated, e.g. 0,1,2 (default: %(default)s)"
    )
    study.add_argument(
        "-S",
        "--set-param",
        action="append",
        default=[],
        dest="sets",
        metavar="KEY=VALUE",
        help="a params.yaml override for every experiment of the grid, as dvc exp run -S takes it",
    )
    study.add_argument(
        "--sweep",
        action="append",
        default=[],
        dest="sweeps",
        metavar="KEY=V1,V2,...",
        help="a param's values, repeatable: the grid is encodings x seeds x every sweep's values",
    )
    study.add_argument(
        "--select", metavar="KEY[,KEY]", help="as for report: --sweep keys, chosen by validation loss (default: none)"
    )
    study.add_argument(
        "--ledger",
        metavar="FILE",
        help="CSV that keeps every finished experiment; a point it holds with this code is not run again (default: "
        "OUT/ledger.csv, which a file git tracks is only when named here: --ledger reports/ledger.csv adds the "
        "runs to the committed study's record)",
    )
    study.add_argument(
        "-j", "--jobs", type=int, default=1, help="DVC queue workers, as dvc queue start -j (default: %(default)s)"
    )
    study.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="as for report (default: model.pos=rope, model.impl=native)",
    )
    study.add_argument("--out", default="reports", help="folder for the report (default: %(default)s)")
    study.add_argument(
        "--force", action="store_true", help="overwrite files in --out that git tracks (checked before queueing)"
    )
    study.add_argument(
        "--poll", type=float, default=15.0, help="seconds between looks at the queue (default: %(default)s)"
    )
    study.add_argument("--dry-run", action="store_true", help="say what exists and what would be queued, only")
    study.add_argument("--primary", metavar="NAME,NAME,...", help=f"{PRIMARY_HELP}; checked before queueing")
    gen = add_command(
        commands,
        "generate",
        "continue a prompt with a trained model, streaming the text",
        "Continue a prompt with a trained checkpoint (models/best.pt, a file, or an experiment's from DVC's cache), "
        "printing the text as it is sampled.",
        'llama-pe generate --prompt "ROMEO:" --tokens 100\n  llama-pe generate --exp alibi --prompt - < prompt.txt',
    )
    gen.add_argument("--checkpoint", help="a checkpoint file (default: models/best.pt)")
    gen.add_argument(
        "--exp", help="a DVC experiment's name (or any git revision): its models/best.pt, from DVC's cache"
    )
    gen.add_argument("--prompt", required=True, help="the text to continue; - reads it from stdin")
    gen.add_argument("--tokens", type=int, default=200, help="new tokens to sample")
    gen.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
    gen.add_argument("--top-k", type=int, default=40, help="sample among the k likeliest tokens; 0: all")
    gen.add_argument("--seed", type=int, default=0, help="seed of the sampler (temperature above 0)")
    bench = add_command(
        commands,
        "bench",
        "training and evaluation speed, memory and MFU, side by side with HF",
        "Time every encoding's training steps, evaluation and generation in interleaved rounds, side by side with "
        "transformers' LlamaForCausalLM, and print the ratios; a figure smaller than its spread across rounds is "
        "marked as noise.",
        "llama-pe bench --size small --rounds 5\n  llama-pe bench --size tiny --pos rope,alibi --no-hf",
    )
    bench.add_argument("--size", default="small", help=f"model.size preset: {', '.join(SIZES)}")
    bench.add_argument("--pos", default=",".join(ENCODINGS), help="encodings, comma-separated (default: every one)")
    bench.add_argument("--no-hf", action="store_true", help="leave out transformers' LlamaForCausalLM")
    bench.add_argument("--dropout", default="0,0.1", help="model.dropout values in [0, 1), comma-separated")
    bench.add_argument("--context", type=int, default=64, help="tokens per sequence")
    bench.add_argument("--batch-size", type=int, default=32, help="sequences per step")
    bench.add_argument("--rounds", type=int, default=5, help="interleaved rounds; figures are their medians")
    bench.add_argument("--steps", type=int, default=5, help="steps timed per variant and round")
    bench.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
    bench.add_argument("--device", default="auto", help=f"as train.device: {_names('device')}")
    bench.add_argument("--precision", default="auto", help=f"as train.precision: {_names('precision')}")
    bench.add_argument("--generate-tokens", type=int, default=512, help="0: no generation benchmark")
    bench.add_argument("--profile", action="store_true", help="then profile each variant's training steps")
    bench.add_argument("--out", default="benchmarks/results/bench.json", help="JSON file for the figures")
    show = add_command(
        commands,
        "show",
        "the experiments side by side in the terminal's width: encoding, seed, lr and headline metrics",
        "The table that compares encodings: every experiment of HEAD (or of every commit) with model.pos, "
        "model.impl, train.seed, train.lr, best_val_loss, test_ppl and ppl_at_8x, fitted to the terminal's width. "
        "`dvc exp show` has every param and metric, too many for a terminal.",
        "llama-pe show\n  llama-pe show --all-commits --columns train.max_steps,ppl_at_4x",
    )
    show.add_argument("--all-commits", action="store_true", help="experiments of every commit, not only HEAD's")
    show.add_argument(
        "--columns",
        metavar="KEY,KEY,...",
        help="params or metrics to show after the default ones (any key of `dvc exp show --json`)",
    )
    for subparser in commands.choices.values():  # here, not in each add_parser call: no command can miss it
        subparser.formatter_class = HelpFormatter
    return parser


def add_command(commands, name: str, summary: str, description: str, example: str) -> argparse.ArgumentParser:
    """A subcommand whose --help says what it does and shows how it is called (every command has both)."""
    return commands.add_parser(name, help=summary, description=description, epilog=f"example:\n  {example}")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    def primary() -> list[str] | None:
        return args.primary.split(",") if args.primary is not None else None  # None: the metrics table's default

    def export_command() -> None:
        from llama_pe.commands.export import export_hf  # transformers is slow to import; load it only when needed

        export_hf(args.checkpoint, args.out_dir, force=args.force)

    def report_command() -> None:
        from llama_pe.analysis.report import report

        report(
            ".",
            args.out,
            args.all_commits,
            args.only,
            args.baseline,
            args.force,
            args.ledger,
            args.select,
            primary=primary(),
            runs=args.runs,
        )

    def study_command() -> None:
        from llama_pe.commands.study import study

        study(
            Path("."),
            args.pos,
            args.seeds,
            args.hf,
            args.sets,
            args.jobs,
            Path(args.out),
            args.baseline,
            args.poll,
            args.dry_run,
            args.force,
            args.sweeps,
            args.select,
            ledger_path=Path(args.ledger) if args.ledger else None,
            primary=primary(),
        )

    def generate_command() -> None:
        from llama_pe.commands.generate_command import generate_text, quiet_end_of_stream

        with quiet_end_of_stream():
            generate_text(
                args.checkpoint, args.exp, args.prompt, args.tokens, args.temperature, args.top_k or None, args.seed
            )

    def bench_command() -> None:
        from llama_pe.commands.bench import bench, parse_dropouts
        from llama_pe.commands.bench_results import table

        results = bench(
            Path(args.out),
            size=args.size,
            encodings=args.pos.split(","),
            hf=not args.no_hf,
            dropouts=parse_dropouts(args.dropout),
            context=args.context,
            batch_size=args.batch_size,
            rounds=args.rounds,
            steps=args.steps,
            warmup=args.warmup,
            device_setting=args.device,
            precision_setting=args.precision,
            generate_tokens=args.generate_tokens,
            params_file=Path("params.yaml"),
            profile=args.profile,
        )
        print(table(results))  # the command's output

    def show_command() -> None:
        from llama_pe.commands.show import show

        print(show(".", args.all_commits, [c for c in (args.columns or "").split(",") if c]))  # the command's output

    commands_by_name = {
        "show": show_command,
        "export-hf": export_command,
        "report": report_command,
        "study": study_command,
        "bench": bench_command,
        "generate": generate_command,
    }
    interrupted = {
        "study": "interrupted; DVC's queue goes on with the experiments queued (`dvc queue status`), and the same "
        "`llama-pe study` command picks the grid up where it stands",
    }
    run_stage(
        commands_by_name[args.command], interrupted.get(args.command, "interrupted; no file is left half-written")
    )


if __name__ == "__main__":
    main()
