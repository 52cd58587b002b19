"""The manifest fuzzer (issue 14): 500 generated manifests, each accepted (exit 0) or refused
(exit 2) by `sdbatch validate` with a message naming a column, never a traceback; and `sdbatch run
--dry-run` (which validates, plans and checks the models as run does, writing nothing) accepts and
refuses exactly the same manifests with the same problem lines. Derandomized: CI runs the same 500
cases every time."""

from __future__ import annotations

import tempfile
from pathlib import Path

from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings

from manifest_fuzz import FuzzManifest, Verdict, assert_same_verdict, manifests, verdict
from sdbatch.cli.main import main


def dry_run(path: Path, labels) -> Verdict:
    args = ["run", str(path), "--out", str(path.parent / "out"), "--dry-run",
            *(a for label in labels for a in ("--label", label))]
    return verdict(CliRunner().invoke(main, args, catch_exceptions=False))


@settings(max_examples=500, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(manifests())
def test_every_manifest_is_accepted_or_refused_naming_a_column_and_run_agrees(manifest: FuzzManifest):
    with tempfile.TemporaryDirectory() as folder:
        path = manifest.write(Path(folder))
        checked = assert_same_verdict(path, manifest.labels, dry_run)
        assert not (Path(folder) / "out").exists()  # a dry run writes nothing
    event(f"{manifest.fmt}: exit {checked.exit_code}")


def test_run_refuses_exactly_when_validate_does(tmp_path, tiny_base):
    """The agreement helper with a real `sdbatch run` (not a dry run) plugged in, on a few fixed
    manifests (generated manifests may ask for 8192x8192 images: the fuzzer uses --dry-run)."""
    import pyarrow as pa
    from click.testing import CliRunner

    from manifest_fuzz import assert_same_verdict, verdict
    from sdbatch.cli.main import main

    def run(path: Path, labels) -> Verdict:  # no labels in these cases
        out = path.parent / "out"
        return verdict(CliRunner().invoke(main, ["run", str(path), "--model", tiny_base, "--out", str(out),
                                                 "--device", "cpu", "--executor", "local"], catch_exceptions=False))

    cases = {
        "typo": ({"prompt": ["a"], "cfg": [3]}, "parquet"),
        "past int64": ({"prompt": ["a"], "steps": pa.array([2**64 - 1], pa.uint64())}, "parquet"),
        "bad csv": ({"prompt": ["a", ""], "steps": [2, 0]}, "csv"),
        "fine": ({"prompt": ["a"], "steps": [1], "width": [16], "height": [16], "label_x": [1]}, "jsonl"),
    }
    for name, (columns, fmt) in cases.items():
        folder = tmp_path / name.replace(" ", "_")
        folder.mkdir()
        path = FuzzManifest(pa.table(columns), fmt).write(folder)
        checked = assert_same_verdict(path, (), run)
        assert checked.refused == (name != "fine"), checked.output
