"""Peak memory (and time) of `sdbatch validate` on a large generated manifest; prints JSON.

Each measured command runs as its own child process and its peak RSS is read with ``os.wait4``,
so the numbers are the validating process alone, not this script's.

    python benchmarks/manifest_memory.py --rows 2000000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ADJECTIVES = ["red", "quiet", "ancient", "glowing", "tiny", "enormous", "rusty", "crystal", "misty", "golden"]
NOUNS = ["castle", "fox", "lighthouse", "robot", "forest", "teapot", "dragon", "city", "violin", "mountain"]
CHUNK_ROWS = 1_000_000  # pyarrow's default row group size: how most manifests are written


def _chunk(start: int, stop: int, with_ids: bool, duplicate_every: int) -> pa.Table:
    """Rows start..stop-1: realistic prompt lengths, many distinct prompts, a label column."""
    n = np.arange(start, stop, dtype=np.int64)
    if duplicate_every:
        n = np.where(n % duplicate_every == 1, n - 1, n)  # every k-th row repeats the row before it
    adjective = pa.array(ADJECTIVES).take(pa.array(n % len(ADJECTIVES)))
    noun = pa.array(NOUNS).take(pa.array((n // 10) % len(NOUNS)))
    variant = pc.cast(pa.array(n % 200_000), pa.string())
    prompt = pc.binary_join_element_wise(
        "a highly detailed photograph of a", adjective, noun, "at golden hour, 35mm, variant", variant, " ")
    columns = {
        "prompt": prompt,
        "negative_prompt": pa.array(np.where(n % 3 == 0, "blurry, low quality", "")),
        "seed": pa.array(n.astype(np.uint64)),
        "guidance_scale": pa.array(np.array([3.0, 5.5, 7.5, 9.0])[n % 4]),
        "steps": pa.array(np.array([20, 30, 50])[n % 3]),
        "width": pa.array(np.full(len(n), 512)),
        "height": pa.array(np.full(len(n), 512)),
        "scheduler": pa.array(np.array(["ddim", "euler_a", "dpmpp_2m"])[n % 3]),
        "label": pc.binary_join_element_wise("set-", pc.cast(pa.array(n % 1000), pa.string()), ""),
    }
    if with_ids:
        columns = {"id": pc.binary_join_element_wise("img-", pc.cast(pa.array(n), pa.string()), ""), **columns}
    return pa.table(columns)


def write_manifest(path: Path, rows: int, with_ids: bool, duplicate_every: int = 0) -> Path:
    writer = None
    for start in range(0, rows, CHUNK_ROWS):
        table = _chunk(start, min(start + CHUNK_ROWS, rows), with_ids, duplicate_every)
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema, compression="zstd")
        writer.write_table(table)
    writer.close()
    return path


# Peak RSS is read in a small launcher process, not here: on Linux a child's ru_maxrss also counts
# the memory of the process it was forked from (kept across exec), so a child forked from a big
# parent (this script after writing manifests, or pytest with torch loaded) would report the
# parent's size. The launcher is tiny, so its children report their own peak.
LAUNCHER = """
import json, os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
output = proc.stdout.read().decode()
_, status, usage = os.wait4(proc.pid, 0)
print(json.dumps({"exit_code": os.waitstatus_to_exitcode(status), "peak_rss_kib": usage.ru_maxrss,
                  "output": output}))
"""


def measure(command: list[str]) -> dict:
    """Run ``command`` (through the launcher); its exit code, wall seconds and peak RSS in MiB."""
    started = time.perf_counter()
    launched = subprocess.run([sys.executable, "-c", LAUNCHER, *command], capture_output=True, text=True,
                              check=True)
    result = json.loads(launched.stdout.strip().splitlines()[-1])
    return {
        "exit_code": result["exit_code"],
        "seconds": round(time.perf_counter() - started, 2),
        "peak_rss_mib": round(result["peak_rss_kib"] / 1024, 1),  # Linux reports KiB
        "output": result["output"].strip().splitlines()[-8:],
    }


def sdbatch_command() -> list[str]:
    return [sys.executable, "-c", "from sdbatch.cli.main import main; main()"]


def run(rows: int, folder: Path) -> dict:
    cases = {
        "ids_given": write_manifest(folder / "ids_given.parquet", rows, with_ids=True),
        "ids_derived_1pct_duplicates": write_manifest(folder / "ids_derived.parquet", rows, with_ids=False,
                                                       duplicate_every=100),
    }
    # The same command on a 1-row manifest: the CLI's fixed cost (it imports torch and diffusers).
    baseline = measure(sdbatch_command() + ["validate", str(write_manifest(folder / "one.parquet", 1, True))])
    results = {"rows": rows, "one_row_manifest_peak_rss_mib": baseline["peak_rss_mib"], "cases": {}}
    for name, path in cases.items():
        result = measure(sdbatch_command() + ["validate", str(path)])
        result["file_mib"] = round(path.stat().st_size / 2**20, 1)
        results["cases"][name] = result
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--dir", help="Folder for the generated manifests (default: a temporary one).")
    args = parser.parse_args()
    if args.dir:
        print(json.dumps(run(args.rows, Path(args.dir)), indent=1))
        return
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(run(args.rows, Path(tmp)), indent=1))


if __name__ == "__main__":
    main()
