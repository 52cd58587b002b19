"""The damaged-file matrix (issue 14, item 7): garbage, truncated or deleted x plan, commit marker,
metadata or image of a finished job. `status` and `verify` never crash and say what to do; `run`
refuses a damaged plan in one line (`--overwrite` starts over), redoes a shard whose marker or
metadata is damaged at every start, and one whose image is with `--repair`; after that `verify`
is clean and every image is the one the job made."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import invoke, write_manifest

DAMAGES = ("garbage", "truncated", "deleted")
TARGETS = {
    "plan": lambda out: out / "_job" / "plan.json",
    "marker": lambda out: out / "_job" / "shards" / "00000.json",
    "metadata": lambda out: out / "metadata" / "00000.parquet",
    "image": lambda out: sorted((out / "images" / "00000").glob("*.png"))[0],
}


def images(out: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted((out / "images").rglob("*.png"))}


@pytest.fixture(scope="module")
def finished(tiny_base, tmp_path_factory):
    """A small finished job (two shards), run once; each case damages a copy of it."""
    root = tmp_path_factory.mktemp("damaged")
    manifest = write_manifest(root / "m.parquet", {
        "id": ["a", "b", "c"], "prompt": ["an owl", "a fox", "a cat"], "steps": [1] * 3,
        "width": [16] * 3, "height": [16] * 3})
    out = root / "job"
    args = ["run", str(manifest), "--model", tiny_base, "--device", "cpu", "--executor", "local", "--shard-size", "2"]
    assert invoke(*args, "--out", str(out)).exit_code == 0
    return out, args, images(out)


def damage(path: Path, how: str) -> None:
    if how == "deleted":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(b"\x00\xffnot what was written\xfe" * 7)


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("target", list(TARGETS))
def test_a_damaged_job_folder_is_reported_and_repaired(finished, tmp_path, target, how):
    source, args, made = finished
    out = tmp_path / "job"
    shutil.copytree(source, out)
    damage(TARGETS[target](out), how)
    run = [*args, "--out", str(out)]

    status, verify = invoke("status", str(out)), invoke("verify", str(out))
    for result in (status, verify):
        assert "Traceback" not in result.output, result.output
    # status looks at what is cheap to look at: the plan, the markers and the metadata files' sizes
    assert status.exit_code == {"plan": 2, "marker": 3, "metadata": 3, "image": 0}[target], status.output
    if target == "plan":
        assert status.exit_code == verify.exit_code == 2
        refused = invoke(*run)
        if how == "deleted":  # the markers name this job: the plan is made again and the job resumes
            assert refused.exit_code == 0 and "(3 already done)" in refused.output, refused.output
        else:
            assert refused.exit_code == 2 and "cannot be read" in refused.output and "--overwrite" in refused.output
            assert len([line for line in refused.output.splitlines() if line.startswith("error:")]) == 1
            assert invoke(*run, "--overwrite").exit_code == 0
    elif target == "marker":
        if how == "deleted":
            assert verify.exit_code == 3 and "incomplete" in verify.output
        else:
            assert verify.exit_code == 1 and "commit marker" in verify.output and "is damaged" in verify.output
        repaired = invoke(*run)
        assert repaired.exit_code == 0 and "(1 already done)" in repaired.output, repaired.output
    else:
        assert verify.exit_code == 1, verify.output
        assert "to fix: run the same run command again with --repair" in verify.output and "(00000)" in verify.output
        repaired = invoke(*run, "--repair") if target == "image" else invoke(*run)  # metadata: at every start
        assert repaired.exit_code == 0, repaired.output
        assert "repaired: 1 damaged shard(s) redone (00000)" in repaired.output
    after = invoke("verify", str(out))
    assert after.exit_code == 0, after.output
    now = images(out)
    assert now.keys() == made.keys() and all((now[name] == made[name]).all() for name in made)
