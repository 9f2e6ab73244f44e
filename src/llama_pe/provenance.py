"""Which sources a piece of code runs: the import closure of a module within llama_pe, and a hash of it.

The train stage keys its resume checkpoint on this hash, so a checkpoint is resumed only by the code that made
it; the tests check dvc.yaml's deps against the same closure, so a stage reruns when any code it runs changes.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

PACKAGE = "llama_pe"
SOURCE_ROOT = Path(__file__).resolve().parents[1]  # the folder holding the llama_pe package (src/)


def module_file(module: str, root: Path = SOURCE_ROOT) -> Path | None:
    """The file of a llama_pe module (a .py file or a package's __init__.py), or None if it is not one."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path) -> set[str]:
    """Every llama_pe module a file imports, at the top or inside a function (a lazy import runs all the same)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from llama_pe.core.data import split` imports the module llama_pe.core.data.split.
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name == PACKAGE or name.startswith(PACKAGE + ".")}


def direct_imports(path: Path, root: Path = SOURCE_ROOT) -> set[Path]:
    """The llama_pe files that `path` imports itself (lazy imports too), without the parent packages' __init__.py."""
    files = (module_file(module, root) for module in _imported_modules(path))
    return {file.resolve() for file in files if file is not None}


def import_closure(entry: Path, root: Path = SOURCE_ROOT) -> list[Path]:
    """The llama_pe files that running `entry` imports, transitively, parent packages' __init__.py included."""
    seen: set[Path] = set()
    pending = [Path(entry).resolve()]
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _imported_modules(path):
            parts = module.split(".")
            for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__.py and a/b/__init__.py too
                file = module_file(".".join(parts[:depth]), root)
                if file is not None and file.resolve() not in seen:
                    pending.append(file.resolve())
    seen.discard(Path(entry).resolve())
    return sorted(seen)


def source_hashes(files: list[Path], root: Path = SOURCE_ROOT) -> dict[str, str]:
    """{path relative to root: sha256 of its bytes}, for the files given."""
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def code_fingerprint(module: str) -> dict[str, str]:
    """sha256 of every source file that importing `module` runs, by path: what a checkpoint records of its code."""
    entry = module_file(module)
    if entry is None:
        raise ValueError(f"{module} is not a module of {PACKAGE} under {SOURCE_ROOT}")
    return source_hashes([entry, *import_closure(entry)])
