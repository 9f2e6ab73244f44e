"""The ledger: every finished experiment of a study as one row of a CSV file that git tracks (`llama-pe study
--ledger`).

A row holds where the result came from (the experiment's name and revision, the commit it was based on, when it
finished, the code version of llama_pe.tracking.code_version, and the machine: CPU model, generation, ISA and threads,
device and accelerator, as the train stage recorded them), every param flat (`model.pos`, `train.lr`, ...) and
the metrics the report reads. An experiment is a local git ref; its row is plain text in a commit, so a study
continues on any clone and a report needs no experiment at all.

Rows are only ever added, and the file is replaced whole by a complete copy (atomic_path), so a study stopped at
any moment leaves every row it had. A row that brings a column the ledger lacks (a param or metric that newer code
adds) widens the header; the older rows read as null there, and no value already written changes.

A cell is text as written: strings as they are, numbers, true, false, null and lists as JSON; a string that would
read as one of those is written as a JSON string ("1.0" with its quotes).
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from llama_pe.analysis.experiments import CODE, MACHINE, MACHINE_IDENTITY, PARAM_SECTIONS, SEED, machine_label
from llama_pe.analysis.selection import SELECTION_METRIC
from llama_pe.errors import LlamaPeError
from llama_pe.io import atomic_path
from llama_pe.metrics import Role, has_role
from llama_pe.settings.config import flat_params
from llama_pe.settings.yaml12 import load_yaml
from llama_pe.tracking.code_version import code_version, earliest, equivalences

# Where each result came from; "code" is the column the report groups by (llama_pe.analysis.experiments.CODE).
# The machine's identity is what metrics/train.json records of it (llama_pe.core.device.cpu_identity).
PROVENANCE = ("experiment", "rev", "commit", "date", CODE, *MACHINE_IDENTITY)
# accelerator: null on a CPU; the CPU's signature, ISA and threads: rows of older code did not record them.
OPTIONAL = {"accelerator", "cpu_signature", "cpu_isa", "cpu_threads"}
REQUIRED = (*(c for c in PROVENANCE if c not in OPTIONAL), SEED, SELECTION_METRIC)
NULL = "null"
HEX = re.compile(r"[0-9a-f]{7,40}")
READ_ROLES = (Role.RESULT, Role.TIMING, Role.SETTING)  # the metrics a report reads (llama_pe.metrics)


class LedgerError(LlamaPeError, ValueError):
    """The ledger cannot be read (a missing column, an unparsable value, one point with two results) or written."""


# ---------------------------------------------------------------------------------------------- cells


def render(value: Any) -> str:
    """A value as its cell: a string as it is unless it would read back as something else, the rest as JSON."""
    if isinstance(value, str) and _is_plain(value):
        return value
    return json.dumps(value, ensure_ascii=False)


def read_cell(cell: str) -> Any:
    """A cell as its value; "" (a column added after the row was written) is null. ValueError for bad JSON."""
    if cell == "":
        return None
    if _is_plain(cell):
        return cell
    return json.loads(cell)


def _is_plain(text: str) -> bool:
    """Text that no reader would take for JSON: not empty, not null, true or false, a number, a list or a quote."""
    if text in ("", NULL, "true", "false") or text[0] in '[{"' or text != text.strip():
        return False
    try:
        float(text)  # also "nan", "inf" and "1e3": all kept apart from strings
    except ValueError:
        return True
    return False


def _canonical(value: Any) -> Any:
    """A param as the identity of a point sees it: 1 and 1.0 alike (YAML and -S may write either)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_canonical(item) for item in value]
    return value


def point_identity(params: dict[str, Any], code: str) -> str:
    """What makes two rows the same point: the code and every param (a null param is the same as an absent one)."""
    settled = sorted((key, _canonical(value)) for key, value in params.items() if value is not None)
    return json.dumps([code, settled])


def _is_param(column: str) -> bool:
    return column.startswith(PARAM_SECTIONS)


def _is_metric(column: str) -> bool:
    return has_role(column, *READ_ROLES)


# ---------------------------------------------------------------------------------------------- the file


@dataclass
class Ledger:
    """A ledger file as read and checked: its columns and its rows (values, and the line each starts on)."""

    path: Path
    columns: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    # (point, machine) -> index of its first row: one result per point and machine identity, since another CPU
    # generation rounds differently (a rerun on the same one repeats the row, counted once). Code and machine are
    # as reports/same_computation.csv names them, so a rerun by code or on a CPU recorded as computing the same
    # must equal its point's row, and is counted once.
    _identities: dict[tuple[str, str | None], int] = field(default_factory=dict, repr=False)

    # kind -> reports/same_computation.csv's equivalences of that kind, read once per ledger
    _equivalences: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)

    def same_as(self, value: str | None, kind: str = "code") -> str | None:
        """`value` (a code version, or a machine's label), as reports/same_computation.csv names it."""
        if value is None:
            return None
        if kind not in self._equivalences:
            self._equivalences[kind] = equivalences(project_root(self.path), kind)
        return earliest(self._equivalences[kind], str(value))

    @classmethod
    def read(cls, path: str | Path, must_exist: bool = False) -> Ledger:
        """The ledger at path, every row checked; an absent file is an empty ledger unless it must exist."""
        path = Path(path)
        if not path.exists():
            if must_exist:
                raise LedgerError(f"--ledger {path}: no such file; `llama-pe study` writes one (its --ledger)")
            return cls(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise LedgerError(f"{path}: cannot be read as UTF-8 text ({err})") from None
        ledger = cls(path)
        reader = csv.reader(io.StringIO(text, newline=""))
        try:
            ledger.columns = _checked_header(path, next(reader, []))
            end = reader.line_num
            for cells in reader:
                start, end = end + 1, reader.line_num
                if cells:  # a blank line holds nothing
                    ledger._add(_checked_row(path, start, ledger.columns, cells), start)
        except csv.Error as err:
            raise LedgerError(f"{path} line {reader.line_num}: not CSV ({err})") from None
        return ledger

    def _add(self, row: dict[str, Any], line: int) -> None:
        identity = (
            point_identity(self._params(row), self.same_as(row[CODE])),
            self.same_as(machine_label(row), "machine"),
        )
        first = self._identities.setdefault(identity, len(self.rows))
        if first != len(self.rows):
            _check_same_results(self, first, row, line)
        self.rows.append(row)
        self.lines.append(line)

    @staticmethod
    def _params(row: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in row.items() if _is_param(key)}

    def holds(self, params: dict[str, Any], code: str) -> dict[str, Any] | None:
        """The row of the point these flat params and this code make; None when the ledger has none."""
        point = point_identity(params, self.same_as(code))
        index = min((i for (p, _), i in self._identities.items() if p == point), default=None)  # from any machine
        return None if index is None else self.rows[index]

    def holds_rev(self, rev: str) -> bool:
        """Whether a row records the experiment of this revision (given in full or abbreviated)."""
        return any(str(row["rev"]).startswith(rev) or rev.startswith(str(row["rev"])) for row in self.rows)

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Add rows: the file is written whole under a temporary name and renamed over the old one, so it is
        always either the old ledger or the new one."""
        if not rows:
            return
        added = list(dict.fromkeys(c for row in rows for c in row if c not in self.columns))
        columns = _checked_header(self.path, [*self.columns, *added])
        trial = Ledger(self.path, columns, list(self.rows), list(self.lines), dict(self._identities))
        for row in rows:  # checked as a read would check them, before anything is written
            trial._add(_checked_row(self.path, 0, columns, _cells(row, columns)), 0)
        old = self.path.read_text(encoding="utf-8") if self.path.exists() else ""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        if old and not added:
            buffer.write(old if old.endswith("\n") else old + "\n")  # the old rows byte for byte
        else:
            writer.writerow(columns)
            old_rows = list(csv.reader(io.StringIO(old, newline="")))[1:]
            writer.writerows(cells + [""] * len(added) for cells in old_rows if cells)
        writer.writerows(_cells(row, columns) for row in rows)
        with atomic_path(self.path) as tmp:
            tmp.write_text(buffer.getvalue(), encoding="utf-8")
        fresh = Ledger.read(self.path)
        self.columns, self.rows = fresh.columns, fresh.rows
        self.lines, self._identities = fresh.lines, fresh._identities

    def frame(self, rows: list[dict[str, Any]] | None = None) -> pd.DataFrame:
        """The ledger as the report reads experiments: name, rev, metrics, params, then the rest of the provenance;
        one row per point and machine identity (the first of its rows), or the rows given."""
        if rows is None:
            rows = [self.rows[i] for i in sorted(set(self._identities.values()))]
        metrics = [c for c in self.columns if _is_metric(c)]
        params = [c for c in self.columns if _is_param(c)]
        order = ["experiment", "rev", *metrics, *params, *(c for c in PROVENANCE if c not in ("experiment", "rev"))]
        frame = pd.DataFrame(rows, columns=order).rename(columns={"experiment": "name"})
        # As reports/same_computation.csv names them: a code version or a machine that reruns showed to compute the
        # same as an earlier one is that one, so their runs pair with the earlier runs.
        frame[CODE] = [self.same_as(code) for code in frame[CODE]]
        frame[MACHINE] = [self.same_as(machine_label(row), "machine") for row in rows]  # never paired across machines
        for metric in metrics:
            frame[metric] = pd.to_numeric(frame[metric], errors="coerce")  # null stays NaN
        return frame


def project_root(path: Path) -> Path:
    """The repository a ledger belongs to: the nearest folder above it with a dvc.yaml (else the working folder)."""
    for folder in Path(path).resolve().parents:
        if (folder / "dvc.yaml").is_file():
            return folder
    return Path.cwd()


def _cells(row: dict[str, Any], columns: list[str]) -> list[str]:
    return [_cell(column, row[column]) if column in row else "" for column in columns]


def _cell(column: str, value: Any) -> str:
    if column in PROVENANCE:  # read back as the text it is (_checked_cell): quoting "2" would keep the quotes
        return NULL if value is None else str(value)
    return render(value)


def _where(path: Path, line: int) -> str:
    return f"{path} line {line}" if line else f"{path}, a new row"


def _checked_header(path: Path, header: list[str]) -> list[str]:
    where = f"{path} line 1 (the header)"
    if not header:
        return []  # an empty file: a ledger with nothing in it yet
    repeated = sorted({column for column in header if header.count(column) > 1})
    if repeated:
        raise LedgerError(f"{where}: column {', '.join(repeated)} more than once; each column once")
    missing = [column for column in REQUIRED if column not in header]
    if missing:
        raise LedgerError(
            f"{where}: no column {', '.join(missing)}; a ledger has {', '.join(PROVENANCE)}, every param "
            f"({', '.join(s + '*' for s in PARAM_SECTIONS)}) and the metrics, {SELECTION_METRIC} among them"
        )
    unknown = [c for c in header if c not in PROVENANCE and not _is_param(c) and not _is_metric(c)]
    if unknown:
        raise LedgerError(
            f"{where}: column {', '.join(unknown)} is neither a provenance column ({', '.join(PROVENANCE)}), a param "
            f"({', '.join(s + '*' for s in PARAM_SECTIONS)}) nor a metric the report reads (llama_pe.metrics)"
        )
    return header


def _checked_row(path: Path, line: int, columns: list[str], cells: list[str]) -> dict[str, Any]:
    where = _where(path, line)
    if len(cells) != len(columns):
        raise LedgerError(
            f"{where}: {len(cells)} fields where the header has {len(columns)} (a cell missing, or a "
            "comma too many outside quotes)"
        )
    row = {column: _checked_cell(where, column, cell) for column, cell in zip(columns, cells, strict=True)}
    for column in REQUIRED:
        if row[column] is None:
            raise LedgerError(f"{where}: {column} is empty; every row records it")
    for column in ("rev", "commit"):
        if not HEX.fullmatch(str(row[column])):
            raise LedgerError(f"{where}, column {column}: {row[column]!r} is not a git revision (7 to 40 hex digits)")
    try:
        datetime.datetime.fromisoformat(str(row["date"]))
    except ValueError:
        raise LedgerError(f"{where}, column date: {row['date']!r} is not an ISO 8601 date and time") from None
    return row


def _checked_cell(where: str, column: str, cell: str) -> Any:
    if column in PROVENANCE:
        return None if cell in ("", NULL) else cell
    if _is_metric(column):
        if cell in ("", NULL):
            return None
        try:
            value = float(cell)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise LedgerError(f"{where}, column {column}: {cell!r} is not a finite number (nor null)")
        return value
    try:
        return read_cell(cell)
    except ValueError:
        raise LedgerError(
            f"{where}, column {column}: {cell!r} is not a value a ledger holds (text as it is; numbers, true, false, "
            "null, lists and quoted strings as JSON)"
        ) from None


def _check_same_results(ledger: Ledger, first: int, row: dict[str, Any], line: int) -> None:
    """One point on one machine identity, two rows: the same results (one run recorded twice, or repeated on that
    machine) are one result; other results leave no way to tell which is the point's."""
    earlier = ledger.rows[first]
    differing = [
        column
        for column in ledger.columns
        if _is_metric(column) and not has_role(column, Role.TIMING) and earlier.get(column) != row.get(column)
    ]
    if differing:
        shown = ", ".join(f"{c} {row.get(c)} here, {earlier.get(c)} there" for c in differing[:3])
        raise LedgerError(
            f"{_where(ledger.path, line)}: the same point as line {ledger.lines[first]} (code {row[CODE]}, the same "
            f"params) with other results ({shown}); a point has one result: delete the line that is wrong"
        )


# ---------------------------------------------------------------------------------------------- experiments


def experiment_row(repo: Path, rev: str, name: str) -> dict[str, Any]:
    """A finished DVC experiment as a ledger row, read from its commit (params.yaml, the metrics files, the code)."""
    full = _git(repo, "rev-parse", f"{rev}^{{commit}}").strip()
    dvc_yaml = _git(repo, "show", f"{full}:dvc.yaml")
    metrics: dict[str, Any] = {}
    for path in _metrics_files(dvc_yaml):
        try:
            values = json.loads(_git(repo, "show", f"{full}:{path}"))
        except LedgerError:
            raise LedgerError(f"experiment {name} ({full[:7]}) has no {path}: it did not finish") from None
        metrics.update({key: value for key, value in values.items() if key not in metrics})
    if not metrics.get("cpu") or not metrics.get("device"):
        raise LedgerError(
            f"experiment {name} ({full[:7]}): its metrics record no machine (cpu, device); the train stage of this "
            "code writes them into metrics/train.json, so it was made by older code and cannot be a ledger row"
        )
    params = load_yaml(_git(repo, "show", f"{full}:params.yaml"))
    return {
        "experiment": name,
        "rev": full,
        "commit": _git(repo, "rev-parse", f"{full}^").strip(),  # DVC makes an experiment a child of its baseline
        "date": _git(repo, "log", "-1", "--format=%cI", full).strip(),  # committed by DVC when it finished
        CODE: code_version(repo, full),
        **{key: metrics.get(key) for key in MACHINE_IDENTITY},
        **flat_params(params),
        **{key: value for key, value in metrics.items() if _is_metric(key)},
    }


def _metrics_files(dvc_yaml: str) -> list[str]:
    stages = (load_yaml(dvc_yaml) or {}).get("stages", {})
    entries = [entry for stage in stages.values() for entry in stage.get("metrics", [])]
    return [entry if isinstance(entry, str) else next(iter(entry)) for entry in entries]


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    if done.returncode != 0:
        raise LedgerError(f"git {' '.join(args)} failed in {repo}: {done.stderr.strip()}")
    return done.stdout
