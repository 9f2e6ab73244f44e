"""The project declares what it runs: pyproject.toml lists every package the library imports, and dvc.yaml
lists as deps of each stage every library file the stage's script imports."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml

from llama_pe.provenance import SOURCE_ROOT, direct_imports, import_closure
from tests.conftest import REPO_ROOT


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def third_party_imports(root: Path) -> set[str]:
    """Top-level names of every module the files under root import that is neither stdlib nor llama_pe."""
    names = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("llama_pe", "__future__")}


def test_pyproject_lists_every_package_the_library_imports():
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {_canonical(re.match(r"[A-Za-z0-9_.-]+", spec).group(0)) for spec in declared}
    distributions = packages_distributions()
    imported = third_party_imports(SOURCE_ROOT / "llama_pe")
    assert {"torch", "dvclive", "matplotlib"} <= imported  # the walk sees lazy imports too
    missing = {
        module: distributions[module]
        for module in imported
        if not {_canonical(d) for d in distributions[module]} & declared
    }
    assert not missing, f"imported but not in pyproject.toml's dependencies: {missing}"


def stage_scripts() -> dict[str, tuple[Path, list[str]]]:
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    scripts = {}
    for name, stage in stages.items():
        script = re.search(r"python (stages/\S+\.py)", stage["cmd"]).group(1)
        deps = [d if isinstance(d, str) else next(iter(d)) for d in stage["deps"]]
        scripts[name] = (REPO_ROOT / script, deps)
    return scripts


@pytest.mark.parametrize("stage", list(stage_scripts()))
def test_every_library_file_a_stage_runs_is_among_its_deps(stage):
    script, deps = stage_scripts()[stage]
    assert str(script.relative_to(REPO_ROOT)) in deps
    covered = [REPO_ROOT / d for d in deps]
    missing = [
        str(path.relative_to(REPO_ROOT))
        for path in import_closure(script)
        if not any(path == dep or dep in path.parents for dep in covered)
    ]
    assert not missing, f"stage {stage} imports these files, which its deps in dvc.yaml do not list: {missing}"
    if any(path.name == "catalogue.py" and path.parent.name == "positions" for path in import_closure(script)):
        # The catalogue imports every encoding's file it finds in its folder, which no import statement names.
        assert "src/llama_pe/positions" in deps, f"stage {stage} reads every encoding: list src/llama_pe/positions"


def test_the_import_walk_follows_lazy_and_from_imports(tmp_path):
    package = tmp_path / "llama_pe"
    (package / "sub").mkdir(parents=True)
    for path in ("__init__.py", "sub/__init__.py", "sub/leaf.py", "top.py", "unused.py"):
        (package / path).write_text("")
    (package / "top.py").write_text("def f():\n    from llama_pe.sub import leaf\n")
    entry = tmp_path / "script.py"
    entry.write_text("import llama_pe.top\n")
    closure = {str(p.relative_to(tmp_path)) for p in import_closure(entry, root=tmp_path)}
    assert closure == {"llama_pe/__init__.py", "llama_pe/top.py", "llama_pe/sub/__init__.py", "llama_pe/sub/leaf.py"}


def import_cycles(root: Path) -> list[list[str]]:
    """Every set of llama_pe modules that import one another, directly or around a loop (lazy imports count: they
    run all the same); a package importing its own modules in its __init__.py is no loop."""
    files = sorted(path.resolve() for path in (root / "llama_pe").rglob("*.py"))
    graph = {path: direct_imports(path, root) for path in files}
    reach = {path: set() for path in files}
    for start in files:
        pending = list(graph[start])
        while pending:
            path = pending.pop()
            if path not in reach[start]:
                reach[start].add(path)
                pending.extend(graph.get(path, ()))
    cycles = {
        tuple(sorted(str(other.relative_to(root)) for other in files if other in reach[path] and path in reach[other]))
        for path in files
        if path in reach[path]
    }
    return sorted(map(list, cycles))


def test_no_module_of_the_library_imports_one_that_imports_it_back():
    assert import_cycles(SOURCE_ROOT) == []


def test_the_cycle_check_sees_a_loop_through_a_lazy_import(tmp_path):
    package = tmp_path / "llama_pe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("def f():\n    from llama_pe import high\n")
    (package / "high.py").write_text("from llama_pe.low import f\n")
    assert import_cycles(tmp_path) == [["llama_pe/high.py", "llama_pe/low.py"]]


MAX_MODULE_LINES = 400  # a module longer than this holds two concerns: split it by what it holds


def test_every_module_of_the_library_and_stages_is_at_most_400_lines():
    files = [*(SOURCE_ROOT / "llama_pe").rglob("*.py"), *(REPO_ROOT / "stages").glob("*.py")]
    long = {
        str(f.relative_to(REPO_ROOT)): n for f in files if (n := len(f.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert len(files) > 40 and not long, f"over {MAX_MODULE_LINES} lines: {long}"


def test_the_library_is_its_wings_and_the_few_modules_they_share():
    package = SOURCE_ROOT / "llama_pe"
    wings = sorted(p.name for p in package.iterdir() if (p / "__init__.py").is_file())
    shared = sorted(p.name for p in package.glob("*.py") if p.name != "__init__.py")
    assert wings == ["analysis", "commands", "core", "positions", "settings", "tracking"]
    # What every wing imports: errors, atomic writes, the figures' basics, the metrics' names, the import walk.
    assert shared == ["errors.py", "figures.py", "io.py", "metrics.py", "provenance.py"]
