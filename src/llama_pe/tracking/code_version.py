"""Which computation made a run: its code version, a short hash that a pure refactor keeps and an edit of what the
run computes changes.

What is hashed is what the run executes, read at a revision (an experiment's commit) or in the workspace (what a
queued experiment will run: DVC copies the files git tracks, staged ones included):
- each stage's command and params, as dvc.yaml gives them (not its deps: where a file sits is no computation);
- the Python the stage scripts run: each script and the llama_pe modules it imports, transitively, lazy imports
  included; of the encodings (llama_pe/positions, one file each), only the file of the run's own model.pos and what
  that file imports, so an encoding added beside rope leaves rope's version as it was;
- each of those files as its statements, not its text: docstrings, comments, layout, annotations and the module
  path of a llama_pe import are left out, and the statements are pooled across files and sorted (an import of a
  name counted once), so moving a function to another module, splitting a module or renaming one keeps the
  version. Any change to a statement
  (a formula, a default, a constant) changes it.

A refactor that this cannot see through (a renamed function, say) gets a new version; once reruns show that it
computes the same results to the last digit, reports/same_computation.csv records the new version as the same
computation as the old, and the new version is reported as the old one (`canonical`), so the ledger's earlier
runs stay pairable. The file says what its evidence is. It records machines the same way: a CPU identity whose
runs equal another's to the last digit is reported as that one.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

from llama_pe.errors import LlamaPeError
from llama_pe.settings.yaml12 import load_yaml

CODE_DIGITS = 12  # of the sha256: short enough to read in a table, far from colliding among a project's versions
PACKAGE = "llama_pe"
SOURCE_ROOT = "src"  # the folder of the llama_pe package in the repository (dvc.yaml's PYTHONPATH=src)
ENCODINGS_DIR = f"{SOURCE_ROOT}/{PACKAGE}/positions"
STAGE_SCRIPT = re.compile(r"\bpython\s+(?:-\S+\s+)*(stages/\S+\.py)")
EQUIVALENCES = "reports/same_computation.csv"
# kind: code (a code version) or machine (a machine identity as the report labels it, analysis.experiments);
# evidence: the reruns that gave every metric to the last digit.
EQUIVALENCE_COLUMNS = ("kind", "value", "same_as", "evidence")


class CodeVersionError(LlamaPeError, ValueError):
    """The code of a revision or of the workspace cannot be read (no dvc.yaml, not a git repository)."""


def stage_definitions(dvc_yaml: str) -> dict[str, Any]:
    """What makes each stage's results besides its code: its command and params."""
    stages = (load_yaml(dvc_yaml) or {}).get("stages", {})
    return {name: {key: stage.get(key) for key in ("cmd", "params")} for name, stage in stages.items()}


def code_version(repo: Path, rev: str | None = None, params: dict[str, Any] | None = None) -> str:
    """The code version of a run at `rev` (the workspace when None) with `params` (params.yaml's there when None),
    as reports/same_computation.csv names it (`canonical`)."""
    return canonical(repo, raw_code_version(repo, rev, params))


def raw_code_version(repo: Path, rev: str | None = None, params: dict[str, Any] | None = None) -> str:
    """The hash itself, before any recorded equivalence."""
    tree = _Tree(Path(repo), rev)
    dvc_yaml = tree.read("dvc.yaml")
    if dvc_yaml is None:
        raise CodeVersionError(f"{repo}: no dvc.yaml {tree.where} to tell the code by")
    if params is None:
        params = load_yaml(tree.read("params.yaml") or "") or {}
    stages = stage_definitions(dvc_yaml)
    entries = [m.group(1) for stage in stages.values() if (m := STAGE_SCRIPT.search(str(stage["cmd"])))]
    pos = (params.get("model") or {}).get("pos")
    if isinstance(pos, str) and tree.read(f"{ENCODINGS_DIR}/{pos}.py") is not None:
        entries.append(f"{ENCODINGS_DIR}/{pos}.py")
    statements: list[str] = []
    imports: set[str] = set()  # another module's import of the same name is the same name: counted once
    for path in run_files(tree, entries):
        for statement in _statements(tree.read(path) or "", path):
            (imports.add if statement.startswith(("Import(", "ImportFrom(")) else statements.append)(statement)
    statements = sorted(imports) + sorted(statements)
    text = json.dumps(stages, sort_keys=True) + "".join(f"\n{s}" for s in statements)
    return hashlib.sha256(text.encode()).hexdigest()[:CODE_DIGITS]


def run_files(tree: _Tree, entries: list[str]) -> list[str]:
    """The entries and the llama_pe files they import, transitively (a package's __init__.py with its modules).
    No module but an encoding's imports an encoding's file (the catalogue finds them by name), so of the encodings
    this holds the run's own and those it imports (p_rope's rope, abs_rel's abs and alibi)."""
    seen: set[str] = set()
    pending = [path for path in entries if tree.read(path) is not None]
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _imported_modules(tree.read(path) or "", path):
            parts = module.split(".")
            for depth in range(1, len(parts) + 1):
                found = _module_file(tree, parts[:depth])
                if found and found not in seen:
                    pending.append(found)
    return sorted(seen)


def _module_file(tree: _Tree, parts: list[str]) -> str | None:
    base = "/".join([SOURCE_ROOT, *parts])
    for candidate in (f"{base}.py", f"{base}/__init__.py"):
        if tree.read(candidate) is not None:
            return candidate
    return None


def _imported_modules(text: str, path: str) -> set[str]:
    found = set()
    for node in ast.walk(_parse(text, path)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # from a.b import c: maybe a.b.c
    return {name for name in found if name == PACKAGE or name.startswith(PACKAGE + ".")}


@cache
def _parse(text: str, path: str) -> ast.Module:
    try:
        return ast.parse(text, path)
    except SyntaxError as err:
        raise CodeVersionError(f"{path}: not Python the code version can read ({err.msg}, line {err.lineno})") from None


@cache
def _statements(text: str, path: str) -> tuple[str, ...]:
    """The file's top-level statements as the computation sees them (see the module's docstring)."""
    _parse(text, path)  # a clear error for a file that is not Python
    tree = _Normalised().visit(ast.parse(text, path))  # its own tree: the walk of imports reads the cached one
    kept = []
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom) and _is_own(node):
            continue  # which module a llama_pe name comes from is layout; the name itself stays (inside defs)
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["__all__"]:
            continue
        kept.append(ast.dump(node))
    return tuple(kept)


def _is_own(node: ast.Import | ast.ImportFrom) -> bool:
    names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [alias.name for alias in node.names]
    return all(name == "__future__" or name == PACKAGE or name.startswith(PACKAGE + ".") for name in names)


class _Normalised(ast.NodeTransformer):
    """Leaves out what no run computes: docstrings, annotations, and the module path of a llama_pe import."""

    def _body(self, node: Any) -> Any:
        self.generic_visit(node)
        body = node.body
        first = body[0] if body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            body = body[1:] or [ast.Pass()]
        node.body = body
        return node

    visit_Module = visit_ClassDef = _body

    def visit_FunctionDef(self, node: Any) -> Any:
        node.returns = None
        return self._body(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_arg(self, node: ast.arg) -> ast.arg:
        node.annotation = None
        return node

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AnnAssign:
        node.annotation = ast.Constant(None)  # a dataclass field is still a field; its type text is no computation
        return node

    def visit_ImportFrom(self, node: ast.ImportFrom) -> ast.ImportFrom:
        if node.module and (node.module == PACKAGE or node.module.startswith(PACKAGE + ".")):
            node.module = PACKAGE
        return node


class _Tree:
    """The repository's files as a run gets them: at a revision, or the workspace's files that git tracks."""

    def __init__(self, repo: Path, rev: str | None) -> None:
        self.repo, self.rev = repo, rev
        self.where = "in the workspace" if rev is None else f"at {rev}"
        self._texts: dict[str, str | None] = {}
        if rev is None:
            listed = _git(repo, "ls-files", "-z")
            self._blobs = {path: None for path in listed.split("\0") if path}
        else:
            listed = _git(repo, "ls-tree", "-r", "-z", rev)
            entries = (entry.split("\t", 1) for entry in listed.split("\0") if entry)  # "100644 blob <sha>\t<path>"
            self._blobs = {path: meta.split()[2] for meta, path in entries if meta.split()[1] == "blob"}

    def read(self, path: str) -> str | None:
        if path not in self._blobs:
            return None
        blob = self._blobs[path]
        if blob is not None:
            return _blob_text(str(self.repo), blob)  # the experiments of a study share most of their files
        if path not in self._texts:
            try:
                self._texts[path] = (self.repo / path).read_text(encoding="utf-8")
            except OSError:
                self._texts[path] = None  # tracked but deleted in the workspace
        return self._texts[path]


@cache
def _blob_text(repo: str, blob: str) -> str:
    return _git(Path(repo), "cat-file", "blob", blob)


def equivalences(repo: Path, kind: str = "code") -> dict[str, str]:
    """{value: the earlier value it computes the same as}, of one kind ("code" or "machine"), from
    reports/same_computation.csv; empty where the repository has none."""
    path = Path(repo) / EQUIVALENCES
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if rows and set(EQUIVALENCE_COLUMNS) - set(rows[0]):
        raise CodeVersionError(f"{path}: expected the columns {', '.join(EQUIVALENCE_COLUMNS)}")
    return {row["value"]: row["same_as"] for row in rows if row["kind"] == kind}


def canonical(repo: Path, value: str, kind: str = "code") -> str:
    """The earliest value recorded as the same computation as `value` (`value` itself when none is)."""
    return earliest(equivalences(repo, kind), value)


def earliest(same_as: dict[str, str], value: str) -> str:
    """`value` followed through `same_as` (one kind of equivalences) to the earliest value it names."""
    seen = {value}
    while value in same_as and same_as[value] not in seen:
        value = same_as[value]
        seen.add(value)
    return value


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    if done.returncode != 0:
        raise CodeVersionError(f"git {' '.join(args[:3])} in {repo} failed: {done.stderr.strip()}")
    return done.stdout
