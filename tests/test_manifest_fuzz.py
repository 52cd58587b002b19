"""The manifest fuzzer (issue 14): 500 generated manifests, each accepted (exit 0) or refused
(exit 2) by `sdbatch validate` with a message naming a column, never a traceback. Derandomized:
CI runs the same 500 cases every time."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings

from manifest_fuzz import FuzzManifest, check_contract, manifests, validate_verdict


@settings(max_examples=500, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(manifests())
def test_every_manifest_is_accepted_or_refused_naming_a_column(manifest: FuzzManifest):
    with tempfile.TemporaryDirectory() as folder:
        path = manifest.write(Path(folder))
        checked = validate_verdict(path, manifest.labels)
        check_contract(checked)
    event(f"{manifest.fmt}: exit {checked.exit_code}")
