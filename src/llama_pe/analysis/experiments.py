"""Experiments read from DVC, grouped, aggregated with pandas and compared seed by seed: what `llama-pe report`
and `llama-pe study` both stand on.

One row per experiment (its params and metrics, as `dvc exp show` has them); groups are the experiments that
differ only in train.seed; each group's metrics get n, mean, std and a Student's t 95% interval; every group is
compared with a baseline group seed by seed (same seed, same batches), so that a difference is set against the
seed-to-seed noise of that difference, not against the noise of either side alone; a verdict is a paired t-test
whose p-value Holm's method corrects within its family, every group against the baseline on one metric
(llama_pe.analysis.statistics). Experiments that ran other code (their code version, llama_pe.tracking.code_version)
are other groups, never averaged together. Which metrics are read, compared or only described is llama_pe.metrics'
table.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import re
import shlex
import subprocess
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from llama_pe.analysis.statistics import ALPHA, detectable_difference, holm, paired_t_p_value, t_interval
from llama_pe.errors import LlamaPeError
from llama_pe.metrics import (
    DEFAULT_PRIMARY,
    LOWER,
    METRICS,
    MULTIPLE,
    SCALED_PPL,
    Role,
    has_role,
    is_judged,
    judged_patterns,
    metric_row,
)
from llama_pe.settings.config import SIZES
from llama_pe.settings.yaml12 import load_yaml

log = logging.getLogger(__name__)

SEED = "train.seed"
CODE = "code"  # a short hash of the source files the experiment's stages ran, from the dep hashes DVC records
CODE_PREFIXES = ("stages/", "src/")
# What the train stage records of its machine (llama_pe.core.device.cpu_identity): CPUs of one model name but another
# generation, vector ISA or thread count round floats differently, and moved the default run by 8 test perplexity.
MACHINE_IDENTITY = ("cpu", "cpu_signature", "cpu_isa", "cpu_threads", "device", "accelerator")
MACHINE = "machine"  # those values in one column: runs of different machines are other groups, never paired
PARAM_SECTIONS = ("data.", "tokenizer.", "model.", "train.", "eval.")
DEFAULT_BASELINE = ("model.pos=rope", "model.impl=native")
# Where the train stage's DVCLive files put the validation curve (dvc.yaml: --live plots/train).
VAL_CURVE = "plots/train/plots/metrics/val"


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
    worker = threading.Thread(
        target=lambda: result.append(_call(dvc.api.exp_show, repo=str(repo), num=num)), daemon=True
    )
    worker.start()
    worker.join(timeout)
    if not result:
        raise ReportError(
            f"dvc exp show gave no answer in {timeout:.0f} s (DVC can hang while a queued experiment "
            "finishes); run the command again"
        )
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
            if (_is_param(name) or _is_read(name)) and row.get(name) is None:
                row[name] = _value(value)
        row[CODE] = code_hash(record)
        row[MACHINE] = machine_label({key: _value(record.get(key)) for key in MACHINE_IDENTITY})
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty or "best_val_loss" not in frame:
        return frame
    for metric in [*metric_columns(frame), *setting_columns(frame)]:
        frame[metric] = pd.to_numeric(frame[metric], errors="coerce")  # null stays NaN, never a made-up number
    frame = frame[frame["best_val_loss"].notna()]  # queued, running or failed: no metrics
    # The same params and code give the same losses on a CPU: a commit that changed neither repeats its parent's
    # run (--all-commits lists each), as does an experiment of the committed params. Count such a run once.
    same_run = [*param_columns(frame), CODE, *(m for m in metric_columns(frame) if not has_role(m, Role.TIMING))]
    return frame[~frame[same_run].astype(str).duplicated()].reset_index(drop=True)


# A column the report adds: a rope run evaluated with its frequencies scaled (eval.rope_scaling) is also a group of
# its own per method, whose ppl_at_Kx are the run's ppl_at_Kx_<method>; "none" is the run as trained.
SCALING = "eval.rope_scaling_method"
SCALED_METRIC = re.compile(SCALED_PPL.pattern)  # group 1: the unscaled metric, group 2: the method


def with_rope_scaling_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Each run with ppl_at_Kx_<method> metrics once more per method, as a row of SCALING=<method>.

    A scaled row keeps the run's params, its perplexities by context and its sliding-window perplexities up to the
    training context (where every method is the identity: the local-window reference of the scaled group); its
    other metrics are left out (null), being either the unscaled run's or not measured scaled.
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
            match = CONTEXT_METRIC.match(metric)
            if not (match and (not match["mode"] or context_multiple(metric) <= 1)):  # ppl_at_Kx, sliding up to 1x
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


def _is_read(key: str) -> bool:
    """A metric the report reads: a result, a timing or a setting of METRICS (not one it leaves unreported)."""
    return has_role(key, Role.RESULT, Role.TIMING, Role.SETTING)


def _value(value: Any) -> Any:
    if isinstance(value, str):
        # "!" is how DVC marks a value the experiment does not have (a metric an older commit did not write).
        return {"None": None, "True": True, "False": False, "": None, "!": None}.get(value, value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)  # DVC reads integers back as floats: 400.0 steps
    return value


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """The frame's results and timings, in the order of METRICS' rows."""
    return [c for row in METRICS if row.role in (Role.RESULT, Role.TIMING) for c in frame.columns if row.matches(c)]


def setting_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if has_role(c, Role.SETTING)]


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
    return key, load_yaml(value)


def _same(value: Any, want: Any) -> bool:
    if _is_null(want):  # KEY=null: a param left at null, which the frame holds as None or NaN
        return _is_null(value)
    if isinstance(want, (int, float)) and not isinstance(want, bool) and isinstance(value, (int, float)):
        return math.isclose(float(value), float(want))
    return value == want


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def condition(key: str, value: Any) -> str:
    """KEY=VALUE as --only and --baseline read it back (the value a YAML scalar), quoted for a shell where needed."""
    if isinstance(value, np.generic):
        value = value.item()
    text = "null" if _is_null(value) else yaml.safe_dump(value, default_flow_style=True, width=math.inf)
    return shlex.quote(f"{key}={text.strip().removesuffix('...').strip()}")


# ---------------------------------------------------------------------------------------------- tuning

SELECTION_METRIC = "best_val_loss"  # the train stage's, on the validation split: the only metric selection reads


SELECTION_MARGIN = 0.02  # nats of validation loss within which the sweep's seed alone does not decide


def select_by_validation(
    frame: pd.DataFrame, keys: str | list[str], margin: float = SELECTION_MARGIN
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """For each group, the runs (every seed) at the best value of the swept `keys`; and a table of that choice.

    The rule is fixed before any result is seen, so that later seeds cannot move it: each value of the keys (a
    combination, for several keys) is ranked on its run at the group's first seed (the sweep's); where the two best
    are within `margin` nats, the mean over the first two seeds decides between them, when both have the second
    seed's run (else the first seed's order stands, and the table says that the second seed is missing). Runs at
    other seeds (a main grid at the chosen value) never take part. The choice reads the group keys, `keys` and
    best_val_loss alone, never a test or extrapolation metric: a value picked by the metrics that the report then
    states would report them optimistically.
    """
    keys = [keys] if isinstance(keys, str) else list(keys)
    swept = [c for c in group_keys(frame) if c != CODE]
    for key in keys:
        if key not in frame.columns:
            raise ReportError(
                f"--select {key}: no such param among the runs; params: {', '.join(param_columns(frame))}"
            )
        if key == SEED:
            raise ReportError(f"--select {SEED}: the seeds are what each mean is taken over, not a setting to tune")
        if key not in swept:
            shown = f"{frame[key].iloc[0]}" if not frame.empty else "none"
            raise ReportError(
                f"--select {key}: not swept, every run has {key}={shown}; select a param that varies among the "
                f"runs: {', '.join(swept) or 'none varies'}"
            )
    others = [c for c in group_keys(frame) if c not in keys]
    visible = frame[[*others, *keys, SEED, SELECTION_METRIC]]  # what the choice may see
    chosen = pd.Series(False, index=frame.index)
    table = []
    for label, group in iter_groups(visible, others):
        values = group[keys].apply(lambda row: ", ".join(map(repr, row)), axis=1)
        first_seed = group[SEED].min()
        second_seed = first_seed + 1
        scores = {}
        for value in dict.fromkeys(values):
            at = group[values == value]
            first = at.loc[at[SEED] == first_seed, SELECTION_METRIC]
            if first.empty:
                raise ReportError(
                    f"--select {','.join(keys)}: {label}, {_shown(keys, at.iloc[0])} has no run at {SEED}="
                    f"{first_seed}, the seed every value is ranked on; run it (llama-pe study --seeds {first_seed})"
                )
            second = at.loc[at[SEED] == second_seed, SELECTION_METRIC]
            scores[value] = (float(first.mean()), float(second.mean()) if not second.empty else None)
        ranked = sorted(scores, key=lambda v: scores[v][0])  # ties: the first value the runs list
        best, decided_by, score, n = ranked[0], f"{SEED}={first_seed}", scores[ranked[0]][0], 1
        if len(ranked) > 1 and scores[ranked[1]][0] - scores[best][0] <= margin:
            pair = ranked[:2]
            if all(scores[v][1] is not None for v in pair):
                means = {v: (scores[v][0] + scores[v][1]) / 2 for v in pair}
                best = min(pair, key=lambda v: means[v])
                decided_by = f"{SEED}={first_seed},{second_seed} (the best two within {margin:g} nats)"
                score, n = means[best], 2
            else:
                decided_by = (
                    f"{SEED}={first_seed}; the best two are within {margin:g} nats, so {SEED}={second_seed} "
                    "should decide: MISSING"
                )
        at_best = group.index[values == best]
        chosen |= frame.index.isin(at_best)
        table.append(
            {
                "group": label,
                **{k: group[k].iloc[0] for k in others},
                "key": ",".join(keys),
                "chosen": group.loc[at_best[0], keys[0]] if len(keys) == 1 else best,
                f"mean_{SELECTION_METRIC}": score,
                "n": n,
                "decided_by": decided_by,
                "candidates": "; ".join(
                    f"{v}: {first:.6g}" + (f", {second:.6g}" if second is not None else "")
                    for v, (first, second) in scores.items()
                ),
            }
        )
    return frame[chosen].reset_index(drop=True), pd.DataFrame(table)


def _shown(keys: list[str], row: pd.Series) -> str:
    return ", ".join(f"{k}={row[k]}" for k in keys)


# ---------------------------------------------------------------------------------------------- aggregation


def group_keys(frame: pd.DataFrame) -> list[str]:
    """The params that vary among the experiments, train.seed aside, and the code and the machine if they vary:
    what tells one group from another."""
    candidates = [*param_columns(frame), *(c for c in (CODE, MACHINE) if c in frame)]
    return [c for c in candidates if c != SEED and frame[c].map(repr).nunique() > 1]


def machine_label(identity: dict[str, Any]) -> str | None:
    """A run's machine identity as one value ("AMD EPYC, AuthenticAMD family 25 model 17 stepping 1, AVX512, 2
    threads, cpu"); a value older code did not record is left out, so its runs stay apart from fully recorded ones."""
    parts = []
    for key in MACHINE_IDENTITY:
        value = identity.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        parts.append(f"{int(float(value))} threads" if key == "cpu_threads" else str(value))
    return ", ".join(parts) or None


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


def summarize(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per group and metric: n (runs with a value), mean, std, the 95% interval's bounds and, where no run
    has a value, why (`reason`)."""
    rows = []
    for label, group in iter_groups(frame, keys):
        for metric in metric_columns(frame):
            values = group[metric].dropna().astype(float).to_numpy()  # a null stays out: never averaged in
            mean, std, half = t_interval(values)
            rows.append(
                {
                    "group": label,
                    **{k: group[k].iloc[0] for k in keys},
                    "metric": metric,
                    "n": len(values),
                    "mean": mean,
                    "std": std,
                    "ci95_low": mean - half,
                    "ci95_high": mean + half,
                    "reason": null_reason(group, metric) if len(values) == 0 else None,
                }
            )
    return pd.DataFrame(rows)


# ppl_at_0p5x: the test perplexity with windows of 0.5 × train.context (llama_pe.core.evaluate.metric_suffix).
CONTEXT_METRIC = re.compile(rf"^(?P<mode>sliding_)?ppl_at_(?P<multiple>{MULTIPLE})x$")
# The multiple of train.context a metric's window reaches: ppl_at_8x, context_gain_at_8x, band_loss_4to8x.
REACH = re.compile(rf"(?:_at_|to)(?P<multiple>{MULTIPLE})x$")


def context_multiple(metric: str) -> float | None:
    """The multiple of train.context that a metric's windows reach (a perplexity by context, a band of positions,
    a gain or probe at a distance); None for other metrics."""
    match = REACH.search(metric)
    return float(match["multiple"].replace("p", ".")) if match else None


# attn_distance_l2_at_8x: a statistic of layer 2, 0-based (llama_pe.core.context_use.attention_summary).
LAYER_METRIC = re.compile(r"_l(?P<k>\d+)_")


def layer_count(run: pd.Series) -> tuple[int, str] | None:
    """The run's number of layers and the param that sets it (model.n_layers, else model.size's preset)."""
    n_layers, size = run.get("model.n_layers"), run.get("model.size")
    if not _is_null(n_layers):
        return int(n_layers), f"model.n_layers={int(n_layers)}"
    if size in SIZES:
        return SIZES[size].n_layers, f"model.size={size}"
    return None


def null_reason(group: pd.DataFrame, metric: str) -> str:
    """Why no run of the group has the metric, told from what its runs do have (the evaluate stage records a null
    with its reason; DVC's metrics keep only the null)."""
    first = group.iloc[0]
    if first.get(SCALING, "none") != "none":
        return "scaled evaluation (ppl_at_Kx only)"
    if (layer := LAYER_METRIC.search(metric)) and (layers := layer_count(first)) and int(layer["k"]) >= layers[0]:
        n, source = layers
        shown = f"{n} layers (0-{n - 1}" if n > 1 else "1 layer (0"
        return f"no layer {layer['k']}: the model has {shown}; {source})"
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
    """Every group against the baseline group, seed by seed: the mean difference, its 95% interval, the paired
    t-test's p-value, that p adjusted by Holm's method within the metric's family (every group against the
    baseline on that metric) and the family's size, the smallest difference detectable at 80% power, a verdict."""
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
    if sum(1 for _ in iter_groups(base, keys)) > 1:
        raise ReportError(ambiguous_baseline(frame, keys, baseline))
    base_by_seed = base.set_index(SEED)
    rows = []
    first_with: dict[tuple, str] = {}  # (metric, seeds and differences) -> the first group that has them
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
            same_as = first_with.setdefault((metric, tuple(paired.dropna().items())), label)
            rows.append(
                {
                    "group": label,
                    "metric": metric,
                    "n_pairs": len(diffs),
                    "mean_diff": mean,
                    "std_diff": std,
                    "ci95_low": mean - half,
                    "ci95_high": mean + half,
                    "p_value": paired_t_p_value(diffs) if is_judged(metric) else math.nan,  # no verdict, no test
                    "min_detectable_diff": detectable_difference(std, len(diffs)) if is_judged(metric) else math.nan,
                    "same_as": same_as if same_as != label and np.any(diffs) else None,  # all 0: no test to repeat
                    "unpaired": unpaired_reason(group, base, metric) if len(diffs) == 0 else None,
                }
            )
    return with_verdicts(pd.DataFrame(rows))


def ambiguous_baseline(frame: pd.DataFrame, keys: list[str], baseline: dict[str, Any]) -> str:
    """Why the baseline matches several groups, and options that make it one: --select where the keys those groups
    differ in are swept within every group (each group then keeps one value); --only with one of the values found,
    the one most groups have first (a study's, not HEAD's committed run's); --baseline naming that value, where
    every other group pairs with it by seed."""
    base = frame[matching(frame, baseline)]
    matched = [label for label, _ in iter_groups(base, keys)]
    apart = [k for k in keys if base[k].map(repr).nunique() > 1]  # what the matched groups differ in
    wanted = ", ".join(f"{k}={v}" for k, v in baseline.items())
    message = f"--baseline {wanted}: matches {len(matched)} groups ({'; '.join(matched)}), which differ in "
    message += ", ".join(apart)
    others = [k for k in keys if k not in apart]
    unswept = next((group for _, group in iter_groups(frame, others) if _count_groups(group, apart) < 2), None)
    if unswept is None:
        message += f"; report each group at its best value of the sweep: `--select {','.join(apart)}`; or"
    else:
        message += (
            f"; {', '.join(apart)} {'is' if len(apart) == 1 else 'are'} not swept in every group "
            f"({group_label(unswept.iloc[0], others)} has "
            f"{_shown(apart, unswept.iloc[0])} only), so --select cannot choose it;"
        )
    combos = [{k: group[k].iloc[0] for k in apart} for _, group in iter_groups(base, apart)]
    counts = {i: _count_groups(frame[matching(frame, combo)], keys) for i, combo in enumerate(combos)}
    ranked = sorted(counts, key=lambda i: -counts[i])
    options = [
        f"`{' '.join(f'--only {condition(k, v)}' for k, v in combos[i].items())}` "
        f"({counts[i]} group{'s' if counts[i] != 1 else ''})"
        for i in ranked
    ]
    message += f" keep one value: {' or '.join(options)}"
    first = {**baseline, **combos[ranked[0]]}
    if _pairs_with_every_group(frame, keys, first):
        given = [condition(k, v) for k, v in first.items() if (k, v) != (SCALING, "none")]  # the report adds it
        message += f"; or compare every group with one of them: `{' '.join(f'--baseline {c}' for c in given)}`"
    return message


def _count_groups(frame: pd.DataFrame, keys: list[str]) -> int:
    return sum(1 for _ in iter_groups(frame, keys)) if not frame.empty else 0


def _pairs_with_every_group(frame: pd.DataFrame, keys: list[str], baseline: dict[str, Any]) -> bool:
    is_baseline = matching(frame, baseline)
    seeds = set(frame.loc[is_baseline, SEED])
    return all(set(group[SEED]) & seeds for _, group in iter_groups(frame[~is_baseline], keys))


def with_verdicts(diffs: pd.DataFrame) -> pd.DataFrame:
    """The paired differences with p_holm and family_size, per metric, and the verdict that p_holm gives.

    A group whose differences repeat an earlier group's exactly (a RoPE-scaled evaluation up to the training
    context is its trained run's, `same_as`) is the same test, not another member of the family: it takes that
    group's adjusted p.
    """
    if diffs.empty:
        return diffs
    repeated = diffs["same_as"].map(lambda same_as: isinstance(same_as, str))  # pandas reads None as NaN
    by_metric = diffs["p_value"].mask(repeated).groupby(diffs["metric"], sort=False)
    diffs = diffs.assign(
        p_holm=by_metric.transform(lambda p: holm(p.to_numpy())),
        family_size=by_metric.transform(lambda p: int(p.notna().sum())),
    )
    adjusted = diffs.set_index(["group", "metric"])["p_holm"]
    for index in diffs.index[repeated]:
        diffs.loc[index, "p_holm"] = adjusted[(diffs.at[index, "same_as"], diffs.at[index, "metric"])]
    judged = [
        reason if isinstance(reason, str) else verdict(metric, mean, p_holm, n)  # pandas reads None as NaN
        for reason, metric, mean, p_holm, n in zip(
            diffs["unpaired"], diffs["metric"], diffs["mean_diff"], diffs["p_holm"], diffs["n_pairs"], strict=True
        )
    ]
    return diffs.drop(columns="unpaired").assign(verdict=judged)


def compared_metrics(frame: pd.DataFrame) -> list[str]:
    """The metrics that groups are compared on: every metric but the timings (llama_pe.metrics.Role.TIMING)."""
    return [metric for metric in metric_columns(frame) if not has_role(metric, Role.TIMING)]


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
# Every pair the same value (a RoPE-scaled evaluation up to the training context is its run's own): no test, and no
# member of the metric's family.
IDENTICAL = "identical to the baseline"


def verdict(metric: str, mean_diff: float, p_holm: float, n_pairs: int) -> str:
    """better or worse when the Holm-adjusted p-value of the paired t-test is below ALPHA; else seed noise."""
    if not is_judged(metric):
        return "-"
    if n_pairs < 2:
        return ONE_PAIR
    if math.isnan(p_holm):
        return IDENTICAL
    if p_holm >= ALPHA:
        return NOISE
    return "better" if (mean_diff < 0) == (metric_row(metric).better == LOWER) else "worse"


def primary_endpoints(names: Iterable[str] | None) -> tuple[str, ...]:
    """--primary as metric names, checked against the metrics table before any work; None: the table's default."""
    if names is None:
        return DEFAULT_PRIMARY
    names = tuple(dict.fromkeys(name.strip() for name in names if name.strip()))
    wrong = [name for name in names if not is_judged(name) or SCALED_PPL.matches(name)]
    if wrong or not names:
        problem = f"--primary {','.join(wrong)}: not a metric that gets a verdict" if wrong else "--primary: empty"
        raise ReportError(
            f"{problem}; valid: {', '.join(judged_patterns())}, <K> a multiple of train.context (1, 8, 0p5) "
            f"(default: {','.join(DEFAULT_PRIMARY)})"
        )
    return names


def baseline_conditions(frame: pd.DataFrame, baseline: list[str]) -> dict[str, Any]:
    """--baseline KEY=VALUE as a dict; by default native rope, on the keys that vary among the experiments."""
    conditions = baseline or [c for c in DEFAULT_BASELINE if c.split("=")[0] in group_keys(frame)]
    return dict(_parse_condition(c, frame) for c in conditions)


def read_val_curves(repo: str | Path, frame: pd.DataFrame) -> pd.DataFrame:
    """Each experiment's validation loss by tokens seen, read from its own DVCLive files at its own revision."""
    from dvc.api import DVCFileSystem

    curves = []
    for name, rev in zip(frame["name"], frame["rev"], strict=True):
        present = subprocess.run(["git", "cat-file", "-e", f"{rev}^{{commit}}"], cwd=repo, capture_output=True)
        if present.returncode != 0:  # a ledger's run of another machine: its experiment stayed there
            log.warning("%s (%s) is not in this repository: left out of val_curves.png", name, rev)
            continue
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
