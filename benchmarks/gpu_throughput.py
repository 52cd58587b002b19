"""GPU throughput: stock diffusers against the sdbatch engine with each speed switch, in one process
on one card, on an SD 1.5- or SDXL-architecture model with random weights (speed does not depend on
weight values; ``--model DIR`` for real weights). Prints a table and writes JSON to benchmarks/results/.

    python benchmarks/gpu_throughput.py                      # a GPU: 512x512, 30 steps, PNDM, cfg 7.5
    python benchmarks/gpu_throughput.py --family sdxl        # SDXL base: 1024x1024, 30 steps, Euler, cfg 5
    python benchmarks/gpu_throughput.py --variants eager,compile,all --budget-s 600
    python benchmarks/gpu_throughput.py --tiny               # CPU smoke run: tiny model, 32x32, 4 steps

Measured, each after a warm-up batch (which for compiled variants is where compiling happens):

* stock ``StableDiffusionPipeline`` (``StableDiffusionXLPipeline``) at batches 16/32/64 (SDXL: 4/8/16;
  ``--stock-batches``);
* the engine (``BatchedEngine.generate``) at ``--engine-batches``: eager, then each switch on its own
  (attention kernels, compile, compile + CUDA graphs, fp8) and all together (``--variants``), and
  compile with inductor's default settings instead of diffusers' recommended ones;
* per variant: images/s, ratio to stock's best, peak GPU memory, compile seconds (first batch), and
  the largest uint8 difference from eager on the same rows; for fp8 also the mean absolute pixel
  difference and PSNR against eager fp16;
* host synchronisations per denoising step per scheduler (CUDA's sync debug mode), eager engine;
* ``sdbatch run --executor local`` end to end (``--end-to-end ROWS``): steady-state images/s from
  its summary, to compare with the engine at the same batch size.

Each variant gets a fresh copy of the model (switches change it in place) and a reset of dynamo.
Compiled artefacts go to the sdbatch cache (``SDBATCH_CACHE``): the first compiled variant on a
fresh machine pays the full compile; later ones reuse what they share.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import gc
import json
import logging
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from sdbatch.pipeline.engine import BatchedEngine, BatchSettings, RowInput
from sdbatch.pipeline.loading import LoadedModel, load_model, quiet_libraries
from sdbatch.pipeline.schedulers import make_scheduler
from sdbatch.pipeline.speed.acceleration import SpeedOptionError, SpeedOptions, accelerate

log = logging.getLogger("gpu_throughput")
RESULTS = Path(__file__).resolve().parent / "results"
PROMPTS = ["an astronaut riding a horse on the moon", "a bowl of fruit on a wooden table, soft light",
           "a lighthouse at dusk, oil painting", "a red fox in fresh snow, photograph"]


@dataclass(frozen=True)
class Variant:
    label: str
    options: SpeedOptions
    inductor_options: dict | None = None  # None: sdbatch's INDUCTOR_OPTIONS


def variants(all_attention: str) -> list[Variant]:
    off = dict(compile="off", attention="auto", cuda_graphs="off", quantize="none")
    return [
        Variant("eager", SpeedOptions(**off)),
        *[Variant(f"attention={a}", SpeedOptions(**{**off, "attention": a})) for a in ("flash", "cudnn", "efficient")],
        Variant("compile", SpeedOptions(**{**off, "compile": "on"})),
        Variant("compile(inductor defaults)", SpeedOptions(**{**off, "compile": "on"}), inductor_options={}),
        Variant("compile+cuda_graphs", SpeedOptions(**{**off, "compile": "on", "cuda_graphs": "on"})),
        Variant("fp8", SpeedOptions(**{**off, "quantize": "fp8"})),
        Variant("all", SpeedOptions(compile="on", attention=all_attention, cuda_graphs="auto")),
        Variant("all+fp8", SpeedOptions(compile="on", attention=all_attention, cuda_graphs="auto", quantize="fp8")),
    ]


# -- the model ---------------------------------------------------------------------------------------
def _random_text_encoder(tokenizer, hidden: int, layers: int, heads: int, act: str, projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=4 * hidden,
                            num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                            hidden_act=act, projection_dim=hidden, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _vae(sample_size: int, **extra):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                         layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, sample_size=sample_size, **extra)


def random_pipeline(family: str, device: torch.device, dtype: torch.dtype):
    """The published architecture (SD 1.5: ``runwayml/stable-diffusion-v1-5``; SDXL:
    ``stabilityai/stable-diffusion-xl-base-1.0``) with random weights, built on the device, as the
    stock diffusers pipeline object."""
    from diffusers import (EulerDiscreteScheduler, PNDMScheduler, StableDiffusionPipeline,
                           StableDiffusionXLPipeline, UNet2DConditionModel)

    from sdbatch.pipeline.tiny import (SD15_SCHEDULER_CONFIG, SDXL_SCHEDULER_CONFIG, SDXL_VAE_SCALING_FACTOR,
                                       build_tokenizer)

    torch.manual_seed(0)
    tokenizer = build_tokenizer()  # sdbatch's small BPE one: ids stay inside CLIP's vocabulary
    if family == "sd":
        with torch.device(device):
            unet = UNet2DConditionModel(
                sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
                layers_per_block=2, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768,
                attention_head_dim=8)
            vae = _vae(512)
            text = _random_text_encoder(tokenizer, 768, 12, 12, "quick_gelu")
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
            scheduler=PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False)
    else:
        tokenizer_2 = build_tokenizer(pad_token="!")
        with torch.device(device):
            unet = UNet2DConditionModel(
                sample_size=128, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280),
                layers_per_block=2, down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 2,
                up_block_types=("CrossAttnUpBlock2D",) * 2 + ("UpBlock2D",), transformer_layers_per_block=(1, 2, 10),
                attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
                addition_embed_type="text_time", addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816)
            vae = _vae(1024, scaling_factor=SDXL_VAE_SCALING_FACTOR, force_upcast=True)
            text = _random_text_encoder(tokenizer, 768, 12, 12, "quick_gelu")
            text_2 = _random_text_encoder(tokenizer_2, 1280, 32, 20, "gelu", projection=True)
        pipe = StableDiffusionXLPipeline(
            vae=vae, text_encoder=text, tokenizer=tokenizer, text_encoder_2=text_2, tokenizer_2=tokenizer_2,
            unet=unet, scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG), add_watermarker=False)
    for m in pipe.components.values():
        if isinstance(m, torch.nn.Module):
            m.eval().requires_grad_(False)
    pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pristine_pipeline(args, device: torch.device, dtype: torch.dtype):
    if args.model:
        return load_model(args.model, device, {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32")).pipe
    if args.tiny:
        from sdbatch.pipeline.tiny import build_tiny_pipeline

        pipe = build_tiny_pipeline("xl" if args.family == "sdxl" else "base").to(device=device, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        return pipe
    return random_pipeline(args.family, device, dtype)


def fresh_model(pristine, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """A copy whose UNet and VAE the switches may change in place; the text side is shared."""
    pipe = type(pristine)(**{**pristine.components, "unet": copy.deepcopy(pristine.unet),
                             "vae": copy.deepcopy(pristine.vae)})
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(name="benchmark", revision=None, pipe=pipe, device=device, dtype=dtype)


# -- measuring -------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rows_for(n: int, guidance: float) -> list[RowInput]:
    return [RowInput(PROMPTS[i % len(PROMPTS)], seed=1000 + i, guidance_scale=guidance) for i in range(n)]


def timed(fn, device: torch.device, reps: int) -> tuple[list[float], float | None]:
    """Seconds per call over ``reps`` calls, and peak GPU memory (GiB) during them."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(reps):
        sync(device)
        started = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return times, peak


def measure_stock(pristine, args, device, batch: int) -> tuple[dict, np.ndarray]:
    rows = rows_for(batch, args.guidance)
    kw = dict(height=args.size, width=args.size, num_inference_steps=args.steps, guidance_scale=args.guidance,
              output_type="pil")

    def call():
        gens = [torch.Generator("cpu").manual_seed(r.seed) for r in rows]
        return pristine([r.prompt for r in rows], generator=gens, **kw).images

    first = call()
    times, peak = timed(call, device, args.reps)
    return ({"label": "stock", "batch": batch, "s_per_batch": times, "images_per_s": batch / min(times),
             "peak_mem_gib": peak}, np.stack([np.asarray(im) for im in first]))


def image_difference(a: np.ndarray, b: np.ndarray) -> dict:
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    mse = float((diff ** 2).mean())
    return {"max_abs_uint8": int(diff.max()), "mean_abs": round(float(diff.mean()), 4),
            "psnr_db": round(10 * math.log10(255 ** 2 / mse), 2) if mse > 0 else float("inf")}


def measure_engine(pristine, args, device, dtype, variant: Variant, batch: int) -> tuple[dict, np.ndarray | None]:
    out: dict = {"label": variant.label, "batch": batch, "options": variant.options.__dict__}
    torch._dynamo.reset()
    model = fresh_model(pristine, device, dtype)
    try:
        if variant.inductor_options is not None:  # applied first; the engine finds it applied
            accelerate(model, variant.options, batch_size=batch, inductor_options=variant.inductor_options)
        engine = BatchedEngine(model, speed=variant.options, batch_size=batch)
    except SpeedOptionError as exc:
        return {**out, "skipped": str(exc)}, None
    settings = BatchSettings(args.size, args.size, args.steps, args.scheduler)
    rows = rows_for(batch, args.guidance)
    started = time.perf_counter()
    images = engine.generate(settings, rows).images
    out["first_batch_s"] = round(time.perf_counter() - started, 3)
    times, peak = timed(lambda: engine.generate(settings, rows), device, args.reps)
    out.update(s_per_batch=times, images_per_s=batch / min(times), peak_mem_gib=peak, speed=engine.speed.report())
    engine = model = None  # drop the copies before the next variant
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out, images


def loop_syncs_per_step(pristine, args, device, dtype) -> dict:
    """Host synchronisations per denoising step, by scheduler: CUDA's sync debug mode counts them
    for a 2-row batch at two step counts; the difference over the extra steps is the loop's share."""
    if device.type != "cuda":
        return {"skipped": "CUDA only"}
    engine = BatchedEngine(fresh_model(pristine, device, dtype))
    rows = rows_for(2, args.guidance)
    result = {}
    for scheduler in ("pndm", "ddim", "euler", "euler_a", "dpmpp_2m", "unipc"):
        counts = []
        for steps in (4, 8):
            engine.generate(BatchSettings(args.size, args.size, steps, scheduler), rows)  # warm
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    engine.submit(BatchSettings(args.size, args.size, steps, scheduler), rows)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            counts.append(sum("synchroniz" in str(w.message) for w in caught))
            sync(device)
        result[scheduler] = {"syncs_per_batch_4_steps": counts[0], "syncs_per_batch_8_steps": counts[1],
                             "syncs_per_step": (counts[1] - counts[0]) / 4}
    return result


# -- end to end -------------------------------------------------------------------------------------------
# The CLI's defaults, spelled out: what a user's run gets (on CUDA: compiled, CUDA graphs for small batches).
END_TO_END_SPEED_FLAGS: list[str] = ["--compile", "auto", "--attention", "auto", "--cuda-graphs", "auto",
                                     "--quantize", "none"]


def run_sdbatch_end_to_end(pristine, args, device, rows: int, batch: int, speed_flags: list[str]) -> dict:
    """``sdbatch run --executor local`` on ``rows`` rows (512+), as a subprocess of the CLI, with
    ``speed_flags``. The model is saved to a folder so that the CLI loads it as a user's would. The
    steady-state figure is rows over the worker's shard time less its compile time (summary.json):
    everything a shard costs end to end (reading its rows, generating, encoding, writing,
    committing), without the one-off compile."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cli_module = "sdbatch.cli"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pristine.save_pretrained(root / "model", safe_serialization=True)
        pq.write_table(pa.table({
            "id": [f"row-{i:06d}" for i in range(rows)],
            "prompt": [PROMPTS[i % len(PROMPTS)] for i in range(rows)],
            "seed": list(range(rows)), "guidance_scale": [args.guidance] * rows, "steps": [args.steps] * rows,
            "width": [args.size] * rows, "height": [args.size] * rows, "scheduler": [args.scheduler] * rows,
        }), root / "manifest.parquet")
        cmd = [sys.executable, "-m", cli_module, "run", str(root / "manifest.parquet"), "--model",
               str(root / "model"), "--out", str(root / "out"), "--executor", "local", "--device", str(device),
               "--batch-size", str(batch), *speed_flags]
        started = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            return {"label": "sdbatch run", "error": done.stderr[-2000:]}
        summary = json.loads((root / "out" / "_job" / "summary.json").read_text())
    worker = summary["per_worker"]["local"]
    steady = worker["rows"] / max(worker["seconds"] - worker["compile_seconds"], 1e-9)
    return {"label": "sdbatch run --executor local", "rows": rows, "batch": batch, "wall_s": round(wall, 3),
            "images_per_s": round(steady, 3), "compile_s": worker["compile_seconds"],
            "engine_ratio_note": "compare with the engine's 'all' run at the same batch", "summary": summary}


# -- main -------------------------------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def result_path(report: dict) -> Path:
    date = report["date"][:10]
    what = ("-tiny" if report["tiny"] else "") + ("-sdxl" if report["family"] == "sdxl" else "")
    if report["device_type"] != "cuda":  # never a GPU-looking name for a CPU run
        return RESULTS / f"throughput-smoke-cpu{what}-{date}.json"
    card = re.sub(r"[^a-z0-9]+", "-", report["device"].lower()).strip("-")
    return RESULTS / f"gpu_throughput-{card}{what}-{date}.json"


def print_table(report: dict) -> None:
    best = report.get("stock_best_images_per_s")
    print(f"\n{report['device']}  torch {report['torch']}  diffusers {report['diffusers']}  "
          f"{report['size']}x{report['size']}, {report['steps']} steps, {report['scheduler']}, cfg {report['guidance']}")
    print(f"{'what':<28}{'batch':>6}{'img/s':>9}{'x stock':>9}{'peak GiB':>10}{'compile s':>11}{'max diff':>9}  note")
    for r in report["runs"]:
        if "skipped" in r or "error" in r:
            print(f"{r['label']:<28}{r.get('batch', ''):>6}  skipped: {r.get('skipped') or r.get('error')}")
            continue
        ips = r["images_per_s"]
        peak = f"{r['peak_mem_gib']:.1f}" if r.get("peak_mem_gib") is not None else "-"
        comp = r.get("speed", {}).get("compile_seconds")
        diff = r.get("vs_eager") or r.get("vs_stock") or {}  # eager: against stock on the same rows
        note = f"PSNR {diff['psnr_db']} dB, mean |d| {diff['mean_abs']}" if "fp8" in r["label"] and diff else ""
        print(f"{r['label']:<28}{r['batch']:>6}{ips:>9.2f}{(ips / best if best else 0):>9.2f}{peak:>10}"
              f"{(f'{comp:.1f}' if comp else '-'):>11}{diff.get('max_abs_uint8', '-'):>9}  {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=("sd", "sdxl"), default="sd", help="the architecture (default sd)")
    parser.add_argument("--tiny", action="store_true", help="the tiny random model at 32x32, 4 steps (CPU smoke run)")
    parser.add_argument("--model", help="a diffusers folder with real weights instead of random ones")
    parser.add_argument("--size", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--scheduler", help="default pndm (sdxl: euler)")
    parser.add_argument("--guidance", type=float, help="default 7.5 (sdxl: 5)")
    parser.add_argument("--stock-batches", help="default 16,32,64 (sdxl: 4,8,16; tiny: 2,4)")
    parser.add_argument("--engine-batches", help="default 32 (sdxl: 8; tiny: 4)")
    parser.add_argument("--variants", help="comma-separated labels; default all: "
                                           + ",".join(v.label for v in variants("auto")))
    parser.add_argument("--all-attention", default="auto", help="attention kernel of the 'all' variants")
    parser.add_argument("--reps", type=int, default=2, help="timed batches per run, after a warm-up batch")
    parser.add_argument("--budget-s", type=float, default=0, help="skip what starts after this many seconds (0: no limit)")
    parser.add_argument("--no-sync-check", action="store_true")
    parser.add_argument("--end-to-end", type=int, default=0, metavar="ROWS", help="also time `sdbatch run` on ROWS rows")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/<card>-<date>.json)")
    args = parser.parse_args()
    xl = args.family == "sdxl"
    args.size = args.size or (32 if args.tiny else 1024 if xl else 512)
    args.steps = args.steps or (4 if args.tiny else 30)
    args.scheduler = args.scheduler or ("euler" if xl else "pndm")
    if args.guidance is None:
        args.guidance = 5.0 if xl else 7.5
    default_stock, default_engine = ("2,4", "4") if args.tiny else ("4,8,16", "8") if xl else ("16,32,64", "32")
    stock_batches = [int(b) for b in (args.stock_batches or default_stock).split(",") if b]
    engine_batches = [int(b) for b in (args.engine_batches or default_engine).split(",") if b]

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    quiet_libraries()
    import diffusers

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    started = time.perf_counter()
    report: dict = {
        "benchmark": "gpu_throughput", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(device), "device_type": device.type,
        "capability": ".".join(map(str, torch.cuda.get_device_capability(device))) if device.type == "cuda" else None,
        "torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version(),
        "dtype": str(dtype).removeprefix("torch."), "tiny": args.tiny, "family": args.family,
        "model": args.model or ("sdxl-random" if xl else "sd15-random"),
        "size": args.size, "steps": args.steps, "scheduler": args.scheduler, "guidance": args.guidance,
        "reps": args.reps, "command": " ".join(sys.argv), "runs": [],
    }
    out = Path(args.out) if args.out else result_path(report)

    def save() -> None:
        report["total_s"] = round(time.perf_counter() - started, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1, default=str))

    def over_budget() -> bool:
        return bool(args.budget_s) and time.perf_counter() - started > args.budget_s

    pristine = pristine_pipeline(args, device, dtype)
    pristine.scheduler = make_scheduler(args.scheduler, pristine.scheduler)  # stock runs what the engine runs
    report["build_s"] = round(time.perf_counter() - started, 1)
    stock_images = {}
    for batch in stock_batches:
        if over_budget():
            report["runs"].append({"label": "stock", "batch": batch, "skipped": "time budget"})
            continue
        try:
            run, stock_images[batch] = measure_stock(pristine, args, device, batch)
        except torch.OutOfMemoryError:
            run = {"label": "stock", "batch": batch, "skipped": "out of memory"}
            torch.cuda.empty_cache()
        report["runs"].append(run)
        log.info("%s", run)
        save()
    stock_runs = [r for r in report["runs"] if r["label"] == "stock" and "images_per_s" in r]
    best = max((r["images_per_s"] for r in stock_runs), default=None)
    report["stock_best_images_per_s"] = best

    wanted = set(args.variants.split(",")) if args.variants else None
    chosen = [v for v in variants(args.all_attention) if wanted is None or v.label in wanted]
    for batch in engine_batches:
        eager_images = None
        for variant in chosen:
            if over_budget():
                report["runs"].append({"label": variant.label, "batch": batch, "skipped": "time budget"})
                continue
            try:
                run, images = measure_engine(pristine, args, device, dtype, variant, batch)
            except torch.OutOfMemoryError:
                run, images = {"label": variant.label, "batch": batch, "skipped": "out of memory"}, None
                torch.cuda.empty_cache()
            if images is not None:
                if variant.label == "eager":
                    eager_images = images
                    same = min(len(images), *(len(s) for s in stock_images.values())) if stock_images else 0
                    if same:  # the engine's rows are stock's first rows: same row, same image
                        ref = next(iter(stock_images.values()))
                        run["vs_stock"] = image_difference(images[:same], ref[:same])
                elif eager_images is not None:
                    run["vs_eager"] = image_difference(images, eager_images)
            if best and "images_per_s" in run:
                run["ratio_to_stock_best"] = round(run["images_per_s"] / best, 3)
            report["runs"].append(run)
            log.info("%s", {k: v for k, v in run.items() if k != "s_per_batch"})
            save()

    if args.end_to_end and not over_budget():
        report["runs"].append(run_sdbatch_end_to_end(pristine, args, device, args.end_to_end, engine_batches[0],
                                                     END_TO_END_SPEED_FLAGS))
        save()
    if not args.no_sync_check and not over_budget():
        report["loop_syncs"] = loop_syncs_per_step(pristine, args, device, dtype)
        save()
    print_table(report)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
