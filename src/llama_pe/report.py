"""The study's answer: experiments read from DVC, seeds aggregated with pandas, paired differences, figures.

One row per experiment (its params and metrics, as `dvc exp show` has them); groups are the experiments that
differ only in train.seed; each group's metrics get n, mean, std and a Student's t 95% interval; every group is
compared with a baseline group seed by seed (same seed, same batches), so that a difference is set against the
seed-to-seed noise of that difference, not against the noise of either side alone. Experiments that ran other
code (the hashes of the stages' source files that DVC records) are other groups, never averaged together.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from llama_pe.errors import LlamaPeError
from llama_pe.io import atomic_path, write_text

log = logging.getLogger(__name__)

SEED = "train.seed"
CODE = "code"  # a short hash of the source files the experiment's stages ran, from the dep hashes DVC records
CODE_PREFIXES = ("stages/", "src/")
PARAM_SECTIONS = ("data.", "tokenizer.", "model.", "train.", "eval.")
# The metrics a report aggregates, in the order its tables show them.
METRIC_PATTERNS = (
    r"best_val_loss", r"best_val_bpc", r"(val|test|holdout)_(loss|ppl|bpc)", r"ppl_at_\w+", r"sliding_ppl_at_\w+",
    r"tokens_per_sec", r"params",
)  # fmt: skip
# Timings vary from run to run of the same code and params; everything else repeats exactly on a CPU. Runs that
# shared a machine (queue workers, other work) time the machine's load, not the encoding: a timing is described
# (mean ± std), never compared.
TIMING_METRICS = ("tokens_per_sec",)
# Metrics that describe a run's setting, not its result: the report's opening lines, never compared or averaged.
SETTING_METRICS = ("trained_steps", "trained_tokens", "unigram_val_bpc")
# Which way is better, by metric name; any other metric gets no verdict (params: a count, not a score).
LOWER_IS_BETTER = re.compile(r".*(loss|ppl|bpc)(_at_\w+)?$|^(sliding_)?ppl_at_\w+$")


class ReportError(LlamaPeError, ValueError):
    """The experiments cannot be reported as asked (none selected, an unknown key, no baseline)."""


# ---------------------------------------------------------------------------------------------- reading


def read_experiments(repo: str | Path = ".", all_commits: bool = False) -> pd.DataFrame:
    """One row per finished experiment of the repo (and each commit's own run), as `dvc exp show` lists them."""
    return experiments_frame(exp_show(repo, num=-1 if all_commits else 1))


def exp_show(repo: str | Path, num: int, timeout: float = 300.0) -> list[dict[str, Any]]:
    """dvc.api.exp_show, given up on after `timeout` seconds.

    While a queued experiment finishes, DVC 3.67 can read its temporary repository as it is being deleted and
    wait forever; a report should fail with a reason instead. The call runs in a daemon thread, left behind if
    it hangs.
    """
    import dvc.api  # slow to import; only reading needs it

    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(_call(dvc.api.exp_show, repo=str(repo), num=num)),
                              daemon=True)  # fmt: skip
    worker.start()
    worker.join(timeout)
    if not result:
        raise ReportError(f"dvc exp show gave no answer in {timeout:.0f} s (DVC can hang while a queued experiment "
                          "finishes); run the command again")  # fmt: skip
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def _call(function, **kwargs) -> Any:
    try:
        return function(**kwargs)
    except BaseException as err:  # handed to the caller's thread
        return err


def experiments_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """dvc.api.exp_show's records as a DataFrame: name, rev, every param and every metric; unfinished runs left out.

    DVC gives some values as strings ("None", "True", "[0.5, 1]"); they are read back into values here, and a
    metric that is null for a run (a learned table past its length) stays null, never a number.
    """
    rows = []
    for record in records:
        if record.get("rev") == "workspace":
            continue  # the workspace repeats HEAD's run, or holds a run that no commit or experiment records
        row = {"name": record.get("Experiment") or record.get("rev"), "rev": record.get("rev")}
        for key, value in record.items():
            # When two metrics files of any listed commit share a name, DVC names both by file
            # (metrics/eval.json:val_loss); a metric is one column whichever file holds it.
            name = key.rsplit(":", 1)[-1] if key.startswith("metrics/") else key
            if (_is_param(name) or _is_metric(name) or name in SETTING_METRICS) and row.get(name) is None:
                row[name] = _value(value)
        row[CODE] = code_hash(record)
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty or "best_val_loss" not in frame:
        return frame
    for metric in [*metric_columns(frame), *(m for m in SETTING_METRICS if m in frame)]:
        frame[metric] = pd.to_numeric(frame[metric], errors="coerce")  # null stays NaN, never a made-up number
    frame = frame[frame["best_val_loss"].notna()]  # queued, running or failed: no metrics
    # The same params and code give the same losses on a CPU: a commit that changed neither repeats its parent's
    # run (--all-commits lists each), as does an experiment of the committed params. Count such a run once.
    same_run = [*param_columns(frame), CODE, *(m for m in metric_columns(frame) if m not in TIMING_METRICS)]
    return frame[~frame[same_run].astype(str).duplicated()].reset_index(drop=True)


# A column the report adds: a rope run evaluated with its frequencies scaled (eval.rope_scaling) is also a group of
# its own per method, whose ppl_at_Kx are the run's ppl_at_Kx_<method>; "none" is the run as trained.
SCALING = "eval.rope_scaling_method"
SCALED_METRIC = re.compile(r"(ppl_at_\w+?x)_(linear|dynamic|yarn)")


def with_rope_scaling_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Each run with ppl_at_Kx_<method> metrics once more per method, as a row of SCALING=<method>.

    A scaled row keeps the run's params and its perplexities up to the training context (where every method is
    the identity); its other metrics are left out (null), being either the unscaled run's or not measured scaled.
    """
    scaled = {c: m for c in frame.columns if (m := SCALED_METRIC.fullmatch(c))}
    if not scaled:
        return frame
    parts = [frame.drop(columns=list(scaled)).assign(**{SCALING: "none"})]
    for method in dict.fromkeys(m.group(2) for m in scaled.values()):
        columns = {c: m.group(1) for c, m in scaled.items() if m.group(2) == method}
        rows = frame[frame[list(columns)].notna().any(axis=1)]
        if rows.empty:
            continue
        part = rows.drop(columns=list(scaled)).copy()
        for metric in metric_columns(part):
            if not re.fullmatch(r"ppl_at_\w+", metric):
                part[metric] = np.nan
        for column, metric in columns.items():
            part[metric] = rows[column]
        parts.append(part.assign(**{SCALING: method}))
    return pd.concat(parts, ignore_index=True)


def code_hash(record: dict[str, Any]) -> str | None:
    """A short hash of the source files' hashes that the record's dvc.lock holds (None when it holds none)."""
    code = sorted(f"{key}={value}" for key, value in record.items() if key.startswith(CODE_PREFIXES))
    return hashlib.sha256("\n".join(code).encode()).hexdigest()[:8] if code else None


def _is_param(key: str) -> bool:
    return key.startswith(PARAM_SECTIONS)


def _is_metric(key: str) -> bool:
    return any(re.fullmatch(pattern, key) for pattern in METRIC_PATTERNS)


def _value(value: Any) -> Any:
    if isinstance(value, str):
        # "!" is how DVC marks a value the experiment does not have (a metric an older commit did not write).
        return {"None": None, "True": True, "False": False, "": None, "!": None}.get(value, value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)  # DVC reads integers back as floats: 400.0 steps
    return value


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """The frame's metric columns, in METRIC_PATTERNS order."""
    return [c for pattern in METRIC_PATTERNS for c in frame.columns if re.fullmatch(pattern, c)]


def param_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if _is_param(c)]


def select(frame: pd.DataFrame, only: Iterable[str]) -> pd.DataFrame:
    """The experiments whose params match every KEY=VALUE (the value as a YAML scalar would read)."""
    wanted = dict(_parse_condition(condition, frame) for condition in only)
    if SCALING in wanted and SCALING not in frame:
        raise ReportError(
            f"--only {SCALING}: the RoPE-scaled evaluations are groups of the report, not experiments to select; "
            f"select the runs (--only model.pos=rope) and the report pairs each method with them"
        )
    return frame[matching(frame, wanted)].reset_index(drop=True)


def matching(frame: pd.DataFrame, wanted: dict[str, Any]) -> pd.Series:
    """A mask of the rows whose params have every wanted value."""
    mask = pd.Series(True, index=frame.index)
    for key, value in wanted.items():
        mask &= frame[key].map(lambda v, want=value: _same(v, want))
    return mask


def _parse_condition(condition: str, frame: pd.DataFrame) -> tuple[str, Any]:
    if "=" not in condition:
        raise ReportError(f"--only/--baseline: expected KEY=VALUE, got {condition!r}")
    key, value = condition.split("=", 1)
    if key not in frame.columns and key != SCALING:  # SCALING: a column of the scaled rows write_report adds
        raise ReportError(f"{key}: no such param among the experiments; params: {', '.join(param_columns(frame))}")
    return key, yaml.safe_load(value)


def _same(value: Any, want: Any) -> bool:
    if isinstance(want, (int, float)) and not isinstance(want, bool) and isinstance(value, (int, float)):
        return math.isclose(float(value), float(want))
    return value == want


# ---------------------------------------------------------------------------------------------- aggregation


def group_keys(frame: pd.DataFrame) -> list[str]:
    """The params that vary among the experiments, train.seed aside, and the code if it varies: what tells one
    group from another."""
    candidates = [*param_columns(frame), *([CODE] if CODE in frame else [])]
    return [c for c in candidates if c != SEED and frame[c].map(repr).nunique() > 1]


def check_one_run_per_seed(frame: pd.DataFrame, keys: list[str]) -> None:
    """Pairing by seed needs one run per group and seed; two runs that differ in their results are not one run."""
    for label, group in iter_groups(frame, keys):
        repeated = group[group[SEED].duplicated(keep=False)]
        if not repeated.empty:
            seed = repeated[SEED].iloc[0]
            names = ", ".join(repeated.loc[repeated[SEED] == seed, "name"].astype(str))
            raise ReportError(
                f"{label}: several runs with {SEED}={seed} ({names}) of the same params and code but other results; "
                "keep one: remove the others with `dvc exp remove NAME`, or select with --only"
            )


def group_label(row: pd.Series | dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{k}={None if pd.isna(row[k]) else row[k]}" for k in keys) or "all"


def short_label(row: pd.Series | dict[str, Any], keys: list[str]) -> str:
    """The group's values alone (`native rope`, `native rope + yarn`), for the legends of the figures."""
    parts = []
    for key in keys:
        if key == CODE:
            parts.append(f"code {row[key]}")
        elif key == SCALING:
            parts += [] if row[key] == "none" else [f"+ {row[key]}"]  # unscaled: the run as trained, no suffix
        else:
            parts.append(str(row[key]))
    return " ".join(parts) or "all"


def t_interval(values: np.ndarray) -> tuple[float, float, float]:
    """Mean, sample std and the half-width of the Student's t 95% interval of the mean (NaN below n = 2)."""
    n = len(values)
    mean = float(np.mean(values)) if n else math.nan
    if n < 2:
        return mean, math.nan, math.nan
    std = float(np.std(values, ddof=1))
    return mean, std, float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))


def summarize(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per group and metric: n (runs with a value), mean, std, the 95% interval's bounds and, where no run
    has a value, why (`reason`)."""
    rows = []
    for label, group in iter_groups(frame, keys):
        for metric in metric_columns(frame):
            values = group[metric].dropna().astype(float).to_numpy()  # a null stays out: never averaged in
            mean, std, half = t_interval(values)
            rows.append({
                "group": label, **{k: group[k].iloc[0] for k in keys}, "metric": metric, "n": len(values),
                "mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half,
                "reason": null_reason(group, metric) if len(values) == 0 else None,
            })  # fmt: skip
    return pd.DataFrame(rows)


# ppl_at_0p5x: the test perplexity with windows of 0.5 × train.context (llama_pe.evaluate.metric_suffix).
CONTEXT_METRIC = re.compile(r"^(?P<mode>sliding_)?ppl_at_(?P<multiple>\d+(p\d+)?)x$")


def context_multiple(metric: str) -> float | None:
    """The multiple of train.context that a perplexity-by-context metric scores at; None for other metrics."""
    match = CONTEXT_METRIC.match(metric)
    return float(match["multiple"].replace("p", ".")) if match else None


def null_reason(group: pd.DataFrame, metric: str) -> str:
    """Why no run of the group has the metric, told from what its runs do have (the evaluate stage records a null
    with its reason; DVC's metrics keep only the null)."""
    first = group.iloc[0]
    if first.get(SCALING, "none") != "none":
        return "scaled evaluation (ppl_at_Kx only)"
    encoding = first.get("model.pos", "these")
    multiple = context_multiple(metric)
    scored_at_1x = "ppl_at_1x" in group and group["ppl_at_1x"].notna().any()
    if multiple is not None and multiple > 1 and scored_at_1x:  # scored up to the training length, not past it
        if first.get("data.split") == "random_chunks":
            return "data.split=random_chunks has no text longer than train.context + 1 tokens"
        return f"{encoding} positions stop at train.context"
    return f"not defined for model.pos={encoding}" if "model.pos" in group else "no run recorded it"


def iter_groups(frame: pd.DataFrame, keys: list[str]):
    if not keys:
        yield "all", frame
        return
    for _, group in frame.groupby([frame[k].map(repr) for k in keys], sort=False):
        yield group_label(group.iloc[0], keys), group


NOISE = "not distinguishable from seed noise"


def paired_differences(frame: pd.DataFrame, keys: list[str], baseline: dict[str, Any]) -> pd.DataFrame:
    """Every group against the baseline group, seed by seed: the mean difference, its 95% interval, a verdict."""
    is_baseline = matching(frame, baseline)
    base = frame[is_baseline]
    wanted = ", ".join(f"{k}={v}" for k, v in baseline.items())
    if not baseline:
        raise ReportError(
            f"the groups differ in {', '.join(keys)}, not in what the default baseline names "
            f"({', '.join(DEFAULT_BASELINE)}): give --baseline KEY=VALUE of one group"
        )
    if base.empty:
        raise ReportError(f"--baseline {wanted}: no experiment matches it; give --baseline KEY=VALUE of one group")
    matched = [label for label, _ in iter_groups(base, keys)]
    if len(matched) > 1:
        raise ReportError(
            f"--baseline {wanted}: matches {len(matched)} groups ({'; '.join(matched)}); add --baseline KEY=VALUE "
            "until it names one, or select fewer experiments with --only"
        )
    base_by_seed = base.set_index(SEED)
    rows = []
    for label, group in iter_groups(frame[~is_baseline], keys):
        if not set(group[SEED]) & set(base_by_seed.index):
            raise ReportError(
                f"{label}: none of its runs ({SEED} {_seeds(group)}) pairs with a run of the baseline "
                f"({SEED} {_seeds(base)}); run the same seeds for both, or choose another --baseline"
            )
        for metric in compared_metrics(frame):
            paired = group.set_index(SEED)[metric].astype(float) - base_by_seed[metric].astype(float)
            diffs = paired.dropna().to_numpy()  # only seeds where both runs have a value
            mean, std, half = t_interval(diffs)
            rows.append({
                "group": label, "metric": metric, "n_pairs": len(diffs), "mean_diff": mean, "std_diff": std,
                "ci95_low": mean - half, "ci95_high": mean + half,
                "verdict": unpaired_reason(group, base, metric) if len(diffs) == 0 else verdict(metric, mean, half),
            })  # fmt: skip
    return pd.DataFrame(rows)


def compared_metrics(frame: pd.DataFrame) -> list[str]:
    """The metrics that groups are compared on: every metric but the timings (see TIMING_METRICS)."""
    return [metric for metric in metric_columns(frame) if metric not in TIMING_METRICS]


def unpaired_reason(group: pd.DataFrame, base: pd.DataFrame, metric: str) -> str:
    """Why no seed pairs a value of the group with one of the baseline."""
    if group[metric].isna().all():
        return f"n/a: {null_reason(group, metric)}"
    if base[metric].isna().all():
        return f"n/a: baseline: {null_reason(base, metric)}"
    return f"n/a: no seed has a value in both (group {SEED} {_seeds(group)}, baseline {_seeds(base)})"


def _seeds(frame: pd.DataFrame) -> str:
    return ", ".join(str(seed) for seed in sorted(frame[SEED].unique()))


ONE_PAIR = "(1 pair: no interval, no verdict)"


def verdict(metric: str, mean_diff: float, half_width: float) -> str:
    """better or worse when the 95% interval of the paired difference excludes 0; else seed noise."""
    if not LOWER_IS_BETTER.match(metric) or metric in TIMING_METRICS:
        return "-"
    if math.isnan(half_width):
        return ONE_PAIR
    if abs(mean_diff) <= half_width:
        return NOISE
    return "better" if mean_diff < 0 else "worse"


# ---------------------------------------------------------------------------------------------- writing


DEFAULT_BASELINE = ("model.pos=rope", "model.impl=native")
# Where the train stage's DVCLive files put the validation curve (dvc.yaml: --live plots/train).
VAL_CURVE = "plots/train/plots/metrics/val"


# A clone has the commits but not the experiments: say where they are, and what stands in for them.
NO_EXPERIMENTS = (
    "no DVC experiments here, only the runs that commits hold: experiments are git refs that `git clone` does not "
    "fetch; `dvc exp pull origin -A --no-cache` brings their params and metrics where origin has them, and without "
    "them the committed reports/ are the studies' record"
)


def report(
    repo: str | Path, out_dir: str | Path, all_commits: bool, only: list[str], baseline: list[str], force: bool = False
) -> None:
    """`llama-pe report`: read the experiments, select, aggregate and write the tables and figures."""
    frame = read_experiments(repo, all_commits)
    commits_only = not frame.empty and (frame["name"] == frame["rev"]).all()  # an experiment's name is not its rev
    if commits_only:
        log.warning(NO_EXPERIMENTS)
    frame = select(frame, only)
    if frame.empty and commits_only:
        raise ReportError(f"--only {', '.join(only)}: no run matches; {NO_EXPERIMENTS}")
    wanted = baseline_conditions(frame, baseline)
    write_report(frame, Path(out_dir), wanted, read_val_curves(repo, frame), force)


def baseline_conditions(frame: pd.DataFrame, baseline: list[str]) -> dict[str, Any]:
    """--baseline KEY=VALUE as a dict; by default native rope, on the keys that vary among the experiments."""
    conditions = baseline or [c for c in DEFAULT_BASELINE if c.split("=")[0] in group_keys(frame)]
    return dict(_parse_condition(c, frame) for c in conditions)


def read_val_curves(repo: str | Path, frame: pd.DataFrame) -> pd.DataFrame:
    """Each experiment's validation loss by tokens seen, read from its own DVCLive files at its own revision."""
    from dvc.api import DVCFileSystem

    curves = []
    for name, rev in zip(frame["name"], frame["rev"], strict=True):
        fs = DVCFileSystem(str(repo), rev=rev)
        try:
            loss, tokens = (
                pd.read_csv(io.StringIO(fs.read_text(f"{VAL_CURVE}/{column}.tsv")), sep="\t")[["step", column]]
                for column in ("loss", "tokens")
            )
        except FileNotFoundError:
            log.warning("%s (%s) has no validation curve at %s: left out of val_curves.png", name, rev, VAL_CURVE)
            continue
        curves.append(loss.merge(tokens, on="step").assign(name=name))
    return pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=["name", "step", "tokens", "loss"])


def write_report(
    frame: pd.DataFrame, out_dir: Path, baseline: dict[str, Any], curves: pd.DataFrame | None = None,
    force: bool = False,
) -> dict[str, Path]:  # fmt: skip
    """The tables (runs.csv, summary.csv, comparison.md) and, given the curves, the figures; returns their paths.

    Everything is drafted aside first: a committed file (one that git tracks) is changed only with `force`, so a
    narrower report never silently replaces a study's record.
    """
    if frame.empty:
        raise ReportError(
            "no finished experiments selected: run some (dvc exp run, llama-pe study) or widen the selection "
            "(--all-commits for the experiments of every commit, fewer --only)"
        )
    with tempfile.TemporaryDirectory(prefix="llama-pe-report.") as tmp:
        drafts, described = draft_report(frame, Path(tmp), baseline, curves)
        if not force:
            refuse_overwrite(out_dir, drafts)
        paths = {name: out_dir / name for name in drafts}
        for name, draft in drafts.items():
            with atomic_path(paths[name]) as final:
                shutil.copyfile(draft, final)
    log.info("%s: wrote %s", described, ", ".join(map(str, paths.values())))
    return paths


def draft_report(
    frame: pd.DataFrame, out_dir: Path, baseline: dict[str, Any], curves: pd.DataFrame | None
) -> tuple[dict[str, Path], str]:
    """write_report's files, written into out_dir by name; and a line that says what they hold."""
    from llama_pe import report_figures  # matplotlib is slow to import

    trained, frame = frame, with_rope_scaling_rows(frame)
    if SCALING in frame and SCALING not in baseline:
        baseline = {**baseline, SCALING: "none"}  # the baseline as trained, not one of its scaled evaluations
    keys = group_keys(frame)
    check_one_run_per_seed(frame, keys)
    summary = summarize(frame, keys)
    diffs = paired_differences(frame, keys, baseline) if keys else pd.DataFrame()
    paths = {name: out_dir / name for name in ("runs.csv", "summary.csv", "comparison.md")}
    tables = {"runs.csv": trained, "summary.csv": summary}  # runs.csv: one row per experiment, scaled metrics included
    if curves is not None:
        paths["val_curves.csv"] = out_dir / "val_curves.csv"
        tables["val_curves.csv"] = curves
    for name, table in tables.items():
        with atomic_path(paths[name]) as tmp:
            table.to_csv(tmp, index=False)
    if warning := untrained_warning(trained):
        log.warning(warning)
    write_text(paths["comparison.md"], comparison_markdown(trained, summary, diffs, keys, baseline))
    paths["extrapolation.png"] = report_figures.extrapolation(frame, keys, out_dir / "extrapolation.png")
    paths["bpc.png"] = report_figures.bits_per_character(trained, group_keys(trained), out_dir / "bpc.png")
    if curves is not None:
        # The curves of training: a scaled evaluation trained nothing of its own.
        paths["val_curves.png"] = report_figures.val_curves(trained, group_keys(trained), curves,
                                                            out_dir / "val_curves.png")  # fmt: skip
    runs = f"{len(trained)} experiment" + ("s" if len(trained) != 1 else "")
    return paths, f"{runs} in {summary['group'].nunique()} groups by {', '.join(keys) or 'nothing'}"


# ---------------------------------------------------------------------------------------------- committed files


# Every file a report can write into its folder (val_curves.*: when the experiments' curves are read).
REPORT_FILES = (
    "runs.csv", "summary.csv", "comparison.md", "val_curves.csv", "extrapolation.png", "bpc.png", "val_curves.png",
)  # fmt: skip


def refuse_overwrite(out_dir: Path, drafts: dict[str, Path]) -> None:
    """Refuse to change a file under out_dir that git tracks: bytes equal to the draft's may stay as they are."""
    changed = [name for name in committed(out_dir, drafts) if not _same_bytes(out_dir / name, drafts[name])]
    if changed:
        raise ReportError(overwrite_message(out_dir, changed))


def refuse_committed_folder(out_dir: Path) -> None:
    """Refuse a folder that holds a committed report (before a study trains runs that would change it)."""
    if names := committed(out_dir, REPORT_FILES):
        raise ReportError(overwrite_message(out_dir, names))


def overwrite_message(out_dir: Path, names: list[str]) -> str:
    files = f"{len(names)} committed file{'s' if len(names) != 1 else ''}"
    return (f"--out {out_dir}: the report would change {files} there ({', '.join(names)}); give --out a new folder "
            "to write it elsewhere, or --force to overwrite them")  # fmt: skip


def committed(out_dir: Path, names: Iterable[str]) -> list[str]:
    """Those of the names whose files under out_dir git tracks; none when out_dir is in no git repository."""
    names = list(names)
    folder = out_dir.absolute()
    existing = next(p for p in (folder, *folder.parents) if p.is_dir())  # git needs a folder to run in
    listed = subprocess.run(["git", "ls-files", "-z", "--", *(str(folder / name) for name in names)],
                            cwd=existing, capture_output=True, text=True)  # fmt: skip
    if listed.returncode != 0:
        return []  # not in a git repository: nothing is committed
    tracked = {(existing / path).resolve() for path in listed.stdout.split("\0") if path}
    return [name for name in names if (folder / name).resolve() in tracked]


def _same_bytes(path: Path, draft: Path) -> bool:
    return path.is_file() and path.read_bytes() == draft.read_bytes()


# ---------------------------------------------------------------------------------------------- comparison.md


# The first table's columns: the answer at a glance. Timings are no part of it (TIMING_METRICS).
HEADLINE = ("best_val_loss", "test_ppl", "holdout_bpc", "ppl_at_8x", "sliding_ppl_at_8x")
TIMING_NOTE = (
    "Not a speed comparison: runs shared a machine (queue workers, other work), so a timing describes its run's "
    "machine, not its encoding; `llama-pe bench` compares speed. Mean ± std over seeds, no verdict.\n"
)


def comparison_markdown(
    trained: pd.DataFrame, summary: pd.DataFrame, diffs: pd.DataFrame, keys: list[str], baseline: dict[str, Any]
) -> str:
    """The report's reading: the runs' setting, the headline, perplexity by context, the paired verdicts, the rest."""
    groups = list(dict.fromkeys(summary["group"]))  # the experiments' order, not the alphabet's
    metrics = list(dict.fromkeys(summary["metric"]))
    cells = summary.assign(cell=summary.apply(_summary_cell, axis=1)).pivot(index="group", columns="metric",
                                                                           values="cell")  # fmt: skip
    cells = cells.reindex(index=groups, columns=metrics)
    compared = [m for m in metrics if m not in TIMING_METRICS]
    headline = [m for m in HEADLINE if m in compared]
    by_context = [m for m in compared if CONTEXT_METRIC.match(m)]
    parts = [
        "# Position encodings compared\n",
        *setting_lines(trained),
        f"\nGroups by {', '.join(f'`{k}`' for k in keys) or 'nothing'}; each cell is mean ± std over seeds (n runs), "
        "or n/a with the reason no run has a value.\n",
        "## Headline\n",
        markdown_table(cells[headline].reset_index()),
    ]
    if by_context:
        parts += ["\n## Test perplexity by evaluation context (multiples of train.context)\n",
                  markdown_table(cells[by_context].reset_index())]  # fmt: skip
    if not diffs.empty:
        diffs = diffs.assign(difference=diffs.apply(_difference, axis=1))
        parts += _verdicts(diffs, [g for g in groups if g in set(diffs["group"])], headline, baseline)
    parts += ["\n## Every metric\n", markdown_table(cells[compared].reset_index())]
    if timings := [m for m in metrics if m in TIMING_METRICS]:
        parts += ["\n## Timings\n", TIMING_NOTE, markdown_table(cells[timings].reset_index())]
    if not diffs.empty:
        parts += ["\n## Every paired difference\n",
                  markdown_table(diffs[["group", "metric", "n_pairs", "difference", "verdict"]])]  # fmt: skip
    return "\n".join(parts) + "\n"


def _verdicts(diffs: pd.DataFrame, groups: list[str], headline: list[str], baseline: dict[str, Any]) -> list[str]:
    wanted = ", ".join(f"{k}={v}" for k, v in baseline.items())
    verdicts = diffs.assign(cell=(diffs["difference"] + " " + diffs["verdict"]).str.strip())
    verdicts = verdicts.pivot(index="group", columns="metric", values="cell").reindex(index=groups, columns=headline)
    return [
        f"\n## Against {wanted}, paired by seed\n",
        "Mean difference (group − baseline) over the seeds both ran, with its Student's t 95% interval; *better* "
        "or *worse* only when the interval excludes 0.\n",
        markdown_table(verdicts.reset_index()),
    ]


def _summary_cell(row: pd.Series) -> str:
    if row["n"] == 0:
        return f"n/a: {row['reason']}"
    std = "" if math.isnan(row["std"]) else f" ± {row['std']:.4g}"
    return f"{row['mean']:.4g}{std} (n={row['n']})"


def _difference(row: pd.Series) -> str:
    """The mean paired difference and its interval; empty when no seed pairs (the verdict says why)."""
    if row["n_pairs"] == 0:
        return ""
    interval = "" if math.isnan(row["ci95_low"]) else f" [{row['ci95_low']:+.4g}, {row['ci95_high']:+.4g}]"
    return f"{row['mean_diff']:+.4g}{interval}"


def setting_lines(trained: pd.DataFrame) -> list[str]:
    """What the runs were: size, budget, seeds, code; a verdict read without its setting misleads."""
    keys = group_keys(trained)
    sizes = pd.Series([len(group) for _, group in iter_groups(trained, keys)])
    n = f"{sizes.min()}" if sizes.nunique() == 1 else f"{sizes.min()} to {sizes.max()}"
    seeds = ", ".join(str(seed) for seed in sorted(trained[SEED].unique())) if SEED in trained else "not recorded"
    budget = [f"{name}={value}" for name in ("train.max_steps", "train.max_tokens", "train.context")
              if (value := describe_values(trained, name)) is not None]  # fmt: skip
    done = [f"{value} {unit}" for name, unit in (("trained_steps", "steps"), ("trained_tokens", "tokens"))
            if (value := describe_values(trained, name)) is not None]  # fmt: skip
    lines = [
        f"- **Runs:** {len(trained)}, in {len(sizes)} group{'s' if len(sizes) != 1 else ''} of n = {n} "
        f"({SEED} {seeds})",
        f"- **Model:** model.size={describe_values(trained, 'model.size') or 'not recorded'}, "
        f"{describe_values(trained, 'params') or 'an unrecorded number of'} parameters",
        f"- **Budget:** {', '.join(budget) or 'not recorded'}; "
        + (f"trained {' and '.join(done)} per run" if done else "steps and tokens trained not recorded"),
        f"- **Code:** {describe_values(trained, CODE) or 'not recorded'} (the hash of the stages' source files; "
        "runs.csv names each run's revision)",
    ]
    if sizes.min() < 2:
        lines.append("- **n = 1:** a group with one run has no interval, and no verdict against the baseline")
    if warning := untrained_warning(trained):
        lines.append(f"- **Warning:** {warning}")
    return lines


def untrained_warning(trained: pd.DataFrame) -> str | None:
    """A warning when runs do not beat a unigram model on validation: a verdict between them is one between
    untrained models."""
    if not {"best_val_bpc", "unigram_val_bpc"} <= set(trained.columns):
        return None
    both = trained[["best_val_bpc", "unigram_val_bpc"]].dropna()
    untrained = int((both["best_val_bpc"] >= both["unigram_val_bpc"]).sum())
    if not untrained:
        return None
    return (f"{untrained} of {len(both)} runs do not beat a unigram model (best_val_bpc ≥ unigram_val_bpc): these "
            "models are barely trained, and the verdicts describe untrained models, not the encodings")  # fmt: skip


def describe_values(frame: pd.DataFrame, column: str) -> str | None:
    """A column's values over the runs: `400`, `400 (25 runs), 312 (2 runs)`, `300 to 400`; None when none has one."""
    values = frame[column].dropna() if column in frame else pd.Series(dtype=object)
    if values.empty:
        return None
    counts = values.map(_plain).value_counts()
    if len(counts) == 1:
        return str(counts.index[0])
    if len(counts) > 3 and pd.api.types.is_numeric_dtype(values):
        return f"{_plain(values.min())} to {_plain(values.max())}"
    return ", ".join(f"{value} ({count} run{'s' if count != 1 else ''})" for value, count in counts.items())


def _plain(value: Any) -> str:
    """A number as a reader writes it: 819,200 and 400, not 819200.0."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub table of the frame's cells as text (pandas' to_markdown needs the tabulate package)."""
    header = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += [
        "| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |" for row in frame.itertuples(index=False)
    ]
    return "\n".join(lines)
