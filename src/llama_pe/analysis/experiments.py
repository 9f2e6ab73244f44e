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
import logging
import math
import re
import shlex
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from llama_pe.errors import LlamaPeError
from llama_pe.metrics import (
    METRICS,
    MULTIPLE,
    SCALED_PPL,
    Role,
    has_role,
)
from llama_pe.settings.yaml12 import load_yaml
from llama_pe.tracking.code_version import code_version

log = logging.getLogger(__name__)

SEED = "train.seed"
CODE = "code"  # the code version of the run (llama_pe.tracking.code_version)
CODE_PREFIXES = ("stages/", "src/")  # the deps DVC records of a run's code: one run listed twice has the same
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
    """One row per finished experiment of the repo (and each commit's own run), as `dvc exp show` lists them, each
    with the code version of its commit (llama_pe.tracking.code_version), as the ledger records it."""
    frame = experiments_frame(exp_show(repo, num=-1 if all_commits else 1))
    if not frame.empty:
        frame[CODE] = [code_version(Path(repo), str(rev)) for rev in frame["rev"]]
    return frame


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


CONTEXT_METRIC = re.compile(rf"^(?P<mode>sliding_)?ppl_at_(?P<multiple>{MULTIPLE})x$")
# The multiple of train.context a metric's window reaches: ppl_at_8x, context_gain_at_8x, band_loss_4to8x.
REACH = re.compile(rf"(?:_at_|to)(?P<multiple>{MULTIPLE})x$")


def context_multiple(metric: str) -> float | None:
    """The multiple of train.context that a metric's windows reach (a perplexity by context, a band of positions,
    a gain or probe at a distance); None for other metrics."""
    match = REACH.search(metric)
    return float(match["multiple"].replace("p", ".")) if match else None


# attn_distance_l2_at_8x: a statistic of layer 2, 0-based (llama_pe.core.context_use.attention_summary).
