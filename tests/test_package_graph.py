"""The package graph stays one-way (pipeline a leaf; manifests reads only pipeline's scheduler names
and prompt grammar; jobs never imports cluster; only the CLI knows every package), with no way
around the check: relative imports are resolved to the module they name, dynamic imports
(``importlib.import_module``, ``__import__``) are refused in product code and benchmarks, and no
two modules import each other, even through a function-local import. Reading a job's output folder
(`status`, `verify`) never loads torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
PACKAGES = ("pipeline", "manifests", "jobs", "cluster", "cli")
# package -> the sdbatch modules it may import (prefixes)
ALLOWED = {
    "pipeline": ("sdbatch.pipeline",),
    "manifests": ("sdbatch.manifests", "sdbatch.pipeline.schedulers"),
    "jobs": ("sdbatch.jobs", "sdbatch.manifests", "sdbatch.pipeline"),
    "cluster": ("sdbatch.cluster", "sdbatch.jobs", "sdbatch.manifests", "sdbatch.pipeline"),
    "cli": ("sdbatch.",),
    "benchmarks": ("sdbatch.",),  # benchmarks compose the packages, as the CLI does
}
# importlib.metadata reads installed packages' versions and imports nothing
DYNAMIC_OK = {"importlib.metadata"}


def module_name(path: Path) -> str:
    """``jobs/store/outdir.py`` -> ``sdbatch.jobs.store.outdir`` (benchmarks: ``benchmarks.NAME``)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts if parts[0] == "benchmarks" else ["sdbatch", *parts])


def _absolute(node: ast.ImportFrom, path: Path) -> str:
    if not node.level:
        return node.module or ""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[:len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports resolved, function-local ones included; for
    ``from package import name`` both the package and ``package.name`` (which may be a module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node, path)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def dynamic_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__import__":
            found.append(f"line {node.lineno}: __import__")
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
        for name in names:
            if name.split(".")[0] == "importlib" and name not in DYNAMIC_OK:
                found.append(f"line {node.lineno}: import {name}")
    return found


def product_files() -> dict[str, list[Path]]:
    return {package: sorted((ROOT / package).rglob("*.py")) for package in (*PACKAGES, "benchmarks")}


def module_graph(files: list[Path]) -> dict[str, set[str]]:
    modules = {module_name(f): f for f in files}
    return {name: {m for m in imports(f) if m in modules and m != name} for name, f in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]; counter[0] += 1
        stack.append(root); on_stack.add(root)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter[0]; counter[0] += 1
                    stack.append(nxt); on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop(); on_stack.discard(member); component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def graph_problems(files: dict[str, list[Path]]) -> list[str]:
    wrong = []
    for package, paths in files.items():
        for path in paths:
            where = path.relative_to(ROOT)
            for name in sorted(imports(path)):
                if name.split(".")[0] == "sdbatch" and not name.startswith(ALLOWED[package]):
                    wrong.append(f"{where} imports {name}")
            wrong += [f"{where}: dynamic import, {found}" for found in dynamic_imports(path)]
    graph = module_graph([p for paths in files.values() for p in paths])
    wrong += [f"import cycle: {' <-> '.join(c)}" for c in cycles(graph)]
    return wrong


def test_every_import_follows_the_one_way_graph():
    wrong = graph_problems(product_files())
    assert not wrong, "\n".join(wrong)


def _scratch(tmp_path: Path, files: dict[str, str]) -> dict[str, list[Path]]:
    """A copy of the packages' layout under ``tmp_path`` with ``files`` written into it."""
    out: dict[str, list[Path]] = {}
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        out.setdefault(Path(rel).parts[0], []).append(path)
    return out


def test_the_check_sees_relative_dynamic_and_circular_imports(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    files = _scratch(tmp_path, {
        "jobs/__init__.py": "",
        "jobs/store/__init__.py": "",
        "jobs/store/a.py": "from ...cluster import ray_executor\nfrom . import b\n",
        "jobs/store/b.py": "def f():\n    from .a import g\n",
        "jobs/c.py": "import importlib\nm = __import__('sdbatch.cluster')\nfrom importlib.metadata import version\n",
        "cluster/__init__.py": "",
        "cluster/ray_executor.py": "",
    })
    wrong = graph_problems(files)
    assert "jobs/store/a.py imports sdbatch.cluster" in wrong
    assert "jobs/store/a.py imports sdbatch.cluster.ray_executor" in wrong
    assert "import cycle: sdbatch.jobs.store.a <-> sdbatch.jobs.store.b" in wrong
    assert "jobs/c.py: dynamic import, line 1: import importlib" in wrong
    assert "jobs/c.py: dynamic import, line 2: __import__" in wrong
    assert not any("importlib.metadata" in line for line in wrong)


def test_status_and_verify_do_not_load_torch(tmp_path):
    probe = ("import sys\nfrom sdbatch.cli.main import main\n"
             "for args in (['status', sys.argv[1]], ['verify', sys.argv[1]]):\n"
             "    try:\n        main(args)\n    except SystemExit:\n        pass\n"
             "print('torch loaded' if 'torch' in sys.modules else 'no torch')\n")
    result = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "no torch", result.stdout + result.stderr
