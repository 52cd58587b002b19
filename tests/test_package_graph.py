"""The package graph stays one-way (pipeline a leaf; manifests reads only pipeline's scheduler names
and prompt grammar; jobs never imports cluster; only the CLI knows every package), and reading a
job's output folder (`status`, `verify`) never loads torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
# package -> the sdbatch modules it may import (prefixes)
ALLOWED = {
    "pipeline": ("sdbatch.pipeline",),
    "manifests": ("sdbatch.manifests", "sdbatch.pipeline.schedulers"),
    "jobs": ("sdbatch.jobs", "sdbatch.manifests", "sdbatch.pipeline"),
    "cluster": ("sdbatch.cluster", "sdbatch.jobs", "sdbatch.manifests", "sdbatch.pipeline"),
    "cli": ("sdbatch.",),
}


def imported_modules(path: Path, package: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: inside the same package
                names.add(f"sdbatch.{package}")
            elif node.module:
                names.add(node.module)
    return {n for n in names if n.startswith("sdbatch")}


def test_every_import_follows_the_one_way_graph():
    wrong = []
    for package, allowed in ALLOWED.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for name in imported_modules(path, package):
                if not name.startswith(allowed):
                    wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_a_backward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from sdbatch.cluster.ray_executor import RayExecutor\nfrom . import sibling\n")
    assert imported_modules(bad, "jobs") == {"sdbatch.cluster.ray_executor", "sdbatch.jobs"}


def test_status_and_verify_do_not_load_torch(tmp_path):
    probe = ("import sys\nfrom sdbatch.cli.main import main\n"
             "for args in (['status', sys.argv[1]], ['verify', sys.argv[1]]):\n"
             "    try:\n        main(args)\n    except SystemExit:\n        pass\n"
             "print('torch loaded' if 'torch' in sys.modules else 'no torch')\n")
    result = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "no torch", result.stdout + result.stderr
