"""The driver of `sdbatch run` on a very large manifest: planning time, peak RSS while planning, and
RSS while the job runs (it must stay flat); prints JSON and writes it to benchmarks/results/.

The job runs on the Ray executor with one CPU actor and the built-in tiny model, so the driver is a
process of its own (the actor holds the model); after ``--run-seconds`` of generation the driver
is interrupted (SIGINT, as Ctrl-C) and must exit 130. The driver's RSS is sampled with psutil.

    python benchmarks/plan_memory.py --rows 10000000
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))
from manifest_memory import CHUNK_ROWS, _chunk  # noqa: E402

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def write_manifest(path: Path, rows: int) -> Path:
    """manifest_memory's rows (realistic prompts, ids, a label), made 32x32 and 2 steps so the tiny
    model commits shards quickly: the driver's memory while shards commit is what is measured."""
    writer = None
    for start in range(0, rows, CHUNK_ROWS):
        table = _chunk(start, min(start + CHUNK_ROWS, rows), with_ids=True, duplicate_every=0)
        n = table.num_rows
        for name, value in (("width", 32), ("height", 32), ("steps", 2)):
            table = table.set_column(table.schema.get_field_index(name), name, pa.array([value] * n, pa.int64()))
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema, compression="zstd")
        writer.write_table(table)
    writer.close()
    return path


def sample(proc: psutil.Process, samples: list, stop: threading.Event, started: float) -> None:
    while not stop.is_set():
        try:
            samples.append((round(time.perf_counter() - started, 2), proc.memory_info().rss / 2**20))
        except psutil.NoSuchProcess:
            return
        time.sleep(0.25)


def run(rows: int, folder: Path, run_seconds: float) -> dict:
    written = time.perf_counter()
    manifest = write_manifest(folder / "manifest.parquet", rows)
    write_seconds = time.perf_counter() - written
    out = folder / "out"
    command = [sys.executable, "-m", "sdbatch.cli", "run", str(manifest), "--out", str(out), "--device", "cpu",
               "--actors", "1", "--batch-size", "4"]
    env = {**os.environ, "RAY_ADDRESS": "local", "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    threading.Thread(target=sample, args=(psutil.Process(proc.pid), samples, stop, started), daemon=True).start()
    lines: list[str] = []
    planned_at = None
    for line in proc.stdout:
        lines.append(line.rstrip())
        if planned_at is None and "planned" in line:
            planned_at = time.perf_counter() - started
        if "ready:" in line:
            break
    ready_at = time.perf_counter() - started
    time.sleep(run_seconds)
    interrupted_at = time.perf_counter() - started
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=300)
    lines += rest.splitlines()
    stop.set()
    match = next((re.search(r"planned ([\d,]+) row\(s\) in ([\d,]+) shard\(s\) in ([\d.]+)s", ln) for ln in lines
                  if "planned" in ln), None)
    planning = [rss for t, rss in samples if planned_at is None or t <= planned_at]
    running = [rss for t, rss in samples if ready_at + 5 <= t < interrupted_at]  # after the first batches
    return {
        "benchmark": "plan_memory",
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB)",
        "rows": rows,
        "manifest_mib": round(manifest.stat().st_size / 2**20, 1),
        "manifest_write_seconds": round(write_seconds, 1),
        "planning_seconds_reported": float(match.group(3)) if match else None,
        "planned_rows": int(match.group(1).replace(",", "")) if match else None,
        "planned_shards": int(match.group(2).replace(",", "")) if match else None,
        "driver_peak_rss_mib_planning": round(max(planning), 1) if planning else None,
        "driver_rss_mib_running_first": round(running[0], 1) if running else None,
        "driver_rss_mib_running_last": round(running[-1], 1) if running else None,
        "driver_rss_mib_running_max": round(max(running), 1) if running else None,
        "running_seconds_sampled": round(interrupted_at - ready_at - 5, 1),
        "rows_committed": sum(json.loads(p.read_text())["rows"] for p in (out / "_job" / "shards").glob("*.json")),
        "exit_code": proc.returncode,
        "output_tail": lines[-6:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--run-seconds", type=float, default=60.0, help="Generation time sampled after planning.")
    parser.add_argument("--dir", help="Working folder (default: a temporary one).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        result = run(args.rows, Path(tmp), args.run_seconds)
    print(json.dumps(result, indent=1))
    RESULTS.mkdir(exist_ok=True)
    name = f"plan_memory-{args.rows}-rows-{os.cpu_count()}cpu-{result['date']}.json"
    (RESULTS / name).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
