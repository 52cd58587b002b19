"""CPU throughput: stock diffusers at its best batch size vs `sdbatch run` (local executor, and Ray
with two CPU actors), with the tiny model at 32x32 and 10 steps on a 2,000-row manifest. Prints JSON
and writes it to benchmarks/results/.

    python benchmarks/cpu_throughput.py [--rows 2000] [--baseline-rows 2000] [--actors 2]

Each figure is rows per second. ``wall`` counts everything a user waits for (process start, Ray
start, model loads); ``steady`` counts from the moment the workers had their models loaded to the
last image written, which is what scales with the manifest's size. The baseline (a) loads its
pipeline before its clock starts, so it is a ``steady`` figure; it writes each PNG, as sdbatch does.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pyarrow as pa
import pyarrow.parquet as pq

SIZE, STEPS = 32, 10


def make_manifest(path: Path, rows: int) -> None:
    prompts = [f"a photo of subject {i}, detailed, soft light" for i in range(50)]
    pq.write_table(pa.table({
        "id": [f"row-{i:06d}" for i in range(rows)],
        "prompt": [prompts[i % len(prompts)] for i in range(rows)],
        "seed": list(range(rows)),
        "guidance_scale": [7.5] * rows,
        "steps": [STEPS] * rows,
        "width": [SIZE] * rows,
        "height": [SIZE] * rows,
    }), path)


def baseline_stock(model: str, manifest: Path, rows: int, out: Path, batch: int) -> dict:
    """(a) What a user would write without sdbatch: stock diffusers over the rows, ``batch`` rows a
    call (a list of prompts, one generator per row), writing each PNG."""
    import torch
    from diffusers import StableDiffusionPipeline

    table = pq.read_table(manifest).slice(0, rows).to_pylist()
    pipe = StableDiffusionPipeline.from_pretrained(model, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for first in range(0, len(table), batch):
        chunk = table[first:first + batch]
        images = pipe([r["prompt"] for r in chunk], guidance_scale=7.5, num_inference_steps=STEPS, height=SIZE,
                      width=SIZE, generator=[torch.Generator("cpu").manual_seed(r["seed"]) for r in chunk]).images
        for row, image in zip(chunk, images):
            image.save(out / f"{row['id']}.png")
    seconds = time.perf_counter() - started
    return {"rows": len(table), "batch": batch, "seconds": round(seconds, 3),
            "steady_rows_per_s": round(len(table) / seconds, 3)}


def sdbatch_run(model: str, manifest: Path, out: Path, *args: str) -> dict:
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "sdbatch.cli", "run", str(manifest), "--model", model,
           "--out", str(out), "--device", "cpu", *args]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    summary = json.loads((out / "_job" / "summary.json").read_text())
    return {
        "rows": summary["generated"],
        "wall_seconds": round(wall, 3),
        "wall_rows_per_s": round(summary["generated"] / wall, 3),
        "steady_seconds": summary["generation_seconds"],
        "steady_rows_per_s": summary["generation_images_per_second"],
        "per_worker": summary["per_worker"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--baseline-rows", type=int, default=None, help="rows for (a); default all")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import torch

    from sdbatch.pipeline.loading import quiet_libraries
    from sdbatch.pipeline.tiny import write_tiny_model

    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = str(write_tiny_model(root / "tiny", "base", seed=0))
        manifest = root / "manifest.parquet"
        make_manifest(manifest, args.rows)
        shard = str(max(1, args.rows // (4 * args.actors)))  # a few shards per actor
        common = ["--batch-size", str(args.batch_size), "--shard-size", shard]
        stock = [baseline_stock(model, manifest, args.baseline_rows or args.rows, root / f"a{b}", b) for b in (1, 8, 32)]
        a = max(stock, key=lambda r: r["steady_rows_per_s"])
        b = sdbatch_run(model, manifest, root / "b", "--executor", "local", *common)
        c = sdbatch_run(model, manifest, root / "c", "--executor", "ray", "--actors", str(args.actors), *common)
    report = {
        "benchmark": "cpu_throughput",
        "rows": args.rows, "size": SIZE, "steps": STEPS, "batch_size": args.batch_size,
        "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "date": datetime.date.today().isoformat(),
        "a_stock_diffusers_by_batch": stock,
        "a_stock_diffusers_best": a,
        "b_sdbatch_local": b,
        "c_sdbatch_ray": c,
        "ratio_c_over_a_steady": round(c["steady_rows_per_s"] / a["steady_rows_per_s"], 2),
        "ratio_c_over_b_steady": round(c["steady_rows_per_s"] / b["steady_rows_per_s"], 2),
        "ratio_c_over_b_wall": round(c["wall_rows_per_s"] / b["wall_rows_per_s"], 2),
    }
    print(json.dumps(report, indent=1))
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / f"cpu_throughput-{os.cpu_count()}cpu-{report['date']}.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
