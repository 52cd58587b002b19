"""Speed switches keep images: the compiled engine equals eager, padding to a fixed batch changes no
real row, batch invariance holds with every switch on, and bad or impossible switches are refused
before any work with the reason.

One compiled engine serves the module (inductor on CPU takes tens of seconds per compiled shape):
every compiled test uses schedulers with integer timesteps (ddim, pndm, dpmpp_2m) and one batch
size, so the UNet and the VAE decode compile once each.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from sdbatch.pipeline.engine import BatchedEngine, BatchSettings, RowInput
from sdbatch.pipeline.loading import load_model
from sdbatch.pipeline.speed.acceleration import accelerate
from sdbatch.pipeline.speed.options import ATTENTION_CHOICES, SpeedOptionError, SpeedOptions
from helpers import assert_close, mixed_rows

STEPS = 6
BATCH = 4
# every switch this CPU can run: compile, an explicit attention kernel (PyTorch has flash on CPU)
ALL_ON = SpeedOptions(compile="on", attention="flash", cuda_graphs="auto", quantize="none")


@pytest.fixture(scope="module")
def eager(tiny_base):
    return BatchedEngine(load_model(tiny_base, "cpu", "fp32"))


@pytest.fixture(scope="module")
def compiled(tiny_base, tmp_path_factory):
    """The engine with every CPU switch on, compiled once (warmed by a full batch), its compile
    cache in a fresh sdbatch cache folder."""
    cache = tmp_path_factory.mktemp("speed-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SDBATCH_CACHE", str(cache))
        mp.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
        mp.delenv("TRITON_CACHE_DIR", raising=False)
        engine = BatchedEngine(load_model(tiny_base, "cpu", "fp32"), speed=ALL_ON, batch_size=BATCH)
        started = time.perf_counter()
        engine.generate(BatchSettings(32, 32, STEPS, "ddim"), mixed_rows(BATCH))
        engine.warm_seconds = time.perf_counter() - started
        yield engine


def test_compiled_engine_equals_eager(eager, compiled):
    rows = mixed_rows(BATCH)
    for scheduler in ("ddim", "pndm"):
        settings = BatchSettings(32, 32, STEPS, scheduler)
        ref = eager.generate(settings, rows).images
        out = compiled.generate(settings, rows).images
        for a, b in zip(out, ref):
            assert_close(a, b)


def test_compile_time_is_reported_and_cached_on_disk(compiled):
    report = compiled.speed.report()
    assert report["compile"] is True and report["attention"] == "flash"
    assert report["fused_qkv"] is True
    assert 0 < report["compile_seconds"] <= compiled.warm_seconds
    assert set(report["compile_seconds_by_module"]) == {"unet", "vae_decode"}
    cache = report["compile_cache"]
    assert cache.endswith("torchinductor")
    from pathlib import Path

    assert any(p.is_file() for p in Path(cache).rglob("*")), "nothing compiled was written to the cache"


def test_padding_rows_do_not_change_real_rows(eager, compiled):
    """Short batches and batches without guided rows are padded to the full batch's shapes; real
    rows come out as they do unpadded, and one compile serves them all."""
    settings = BatchSettings(32, 32, STEPS, "ddim")
    rows = mixed_rows(BATCH)
    unguided = [RowInput(f"no guidance {i}", seed=40 + i, guidance_scale=1.0) for i in range(2)]
    padded_before = dict(compiled.speed.stats.padded_samples)
    for batch in (rows[:1], rows[1:4], unguided):
        out = compiled.generate(settings, batch).images
        ref = eager.generate(settings, batch).images
        assert out.shape == ref.shape == (len(batch), 32, 32, 3)
        for a, b in zip(out, ref):
            assert_close(a, b)
    stats = compiled.speed.stats
    assert stats.padded_samples["unet"] > padded_before.get("unet", 0)
    assert stats.padded_samples["vae_decode"] > padded_before.get("vae_decode", 0)
    assert stats.compiled_shapes == {"unet": 1, "vae_decode": 1}


def test_batch_invariance_with_every_switch_on(compiled):
    rows = mixed_rows(BATCH)
    settings = BatchSettings(32, 32, STEPS, "dpmpp_2m")
    batch = compiled.generate(settings, rows).images
    for k in (0, 3):
        assert_close(compiled.generate(settings, [rows[k]]).images[0], batch[k])
    moved = compiled.generate(settings, [rows[3], rows[1], rows[0]]).images
    assert_close(moved[0], batch[3])
    assert_close(moved[2], batch[0])


def test_submit_returns_a_pending_batch(compiled):
    pending = compiled.submit(BatchSettings(32, 32, STEPS, "ddim"), mixed_rows(2))
    result = pending.result()
    assert result.images.dtype == np.uint8 and result.images.shape == (2, 32, 32, 3)
    assert result.scheduler == "ddim" and pending.images.done()


# -- refusals (no compile) -----------------------------------------------------------------
@pytest.mark.parametrize("option, bad", [("compile", "yes"), ("attention", "xformers"),
                                         ("cuda_graphs", "always"), ("quantize", "int4")])
def test_bad_values_are_refused_naming_the_choices(option, bad):
    with pytest.raises(SpeedOptionError, match=f"{option}: unknown value '{bad}'") as caught:
        SpeedOptions(**{option: bad})
    assert isinstance(caught.value, ValueError) and caught.value.option == option


def test_cuda_graphs_need_compile_and_cuda():
    with pytest.raises(SpeedOptionError, match="needs compile"):
        SpeedOptions(compile="off", cuda_graphs="on")
    with pytest.raises(SpeedOptionError, match="needs a CUDA device"):
        SpeedOptions(compile="on", cuda_graphs="on").resolve("cpu", torch.float32, batch_size=1)


def test_auto_resolves_to_eager_on_cpu():
    resolved = SpeedOptions().resolve("cpu", torch.float32, batch_size=1)
    assert not resolved.compile and not resolved.cuda_graphs and resolved.eager


@pytest.mark.parametrize("backend", ["efficient", "cudnn"])
def test_attention_backend_this_device_lacks_is_refused(backend):
    assert backend in ATTENTION_CHOICES
    with pytest.raises(SpeedOptionError, match=f"attention={backend}: .*CUDA only") as caught:
        SpeedOptions(attention=backend).resolve("cpu", torch.float32)
    assert caught.value.option == "attention"


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9),
                    reason="this machine has an fp8-capable GPU")
def test_fp8_without_a_capable_gpu_is_refused_with_the_reason(tiny_base):
    model = load_model(tiny_base, "cpu", "fp32")
    with pytest.raises(SpeedOptionError, match=r"fp8 needs a CUDA GPU of compute capability >= 8.9") as caught:
        BatchedEngine(model, speed=SpeedOptions(quantize="fp8"))
    assert caught.value.option == "quantize"
    assert SpeedOptions(quantize="fp8").lossy
    assert SpeedOptions(quantize="fp8").image_affecting() == {"quantize": "fp8"}
    assert SpeedOptions(compile="on", attention="math").image_affecting() == {}


def test_a_model_runs_with_one_set_of_switches(tiny_base):
    """Fusing and quantizing change the model in place: another set of switches on the same loaded
    model is refused, the same set again returns what was applied."""
    model = load_model(tiny_base, "cpu", "fp32")
    first = accelerate(model, SpeedOptions(compile="off", attention="math"))
    assert accelerate(model, SpeedOptions(compile="off", attention="math")) is first
    with pytest.raises(SpeedOptionError, match="already runs with"):
        accelerate(model, SpeedOptions(compile="on"))


# -- on a GPU only ----------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (sync debug mode)")
@pytest.mark.parametrize("scheduler", ["ddim", "pndm", "dpmpp_2m", "lms", "heun"])
def test_denoising_loop_does_not_wait_for_the_gpu(tiny_base, scheduler):
    """Schedulers that draw no noise per step: the loop adds no host synchronisation per step
    (the count does not grow with the steps). Ancestral and SDE schedulers, euler and unipc copy
    host data to the GPU every step, as stock does."""
    import warnings

    engine = BatchedEngine(load_model(tiny_base, "cuda", "fp16"))
    rows = mixed_rows(2)
    counts = []
    for steps in (3, 6):
        settings = BatchSettings(32, 32, steps, scheduler)
        engine.generate(settings, rows)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                pending = engine.submit(settings, rows)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        pending.result()
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    assert counts[0] == counts[1], f"host syncs at 3 and 6 steps: {counts}"


def test_gpu_benchmark_runs_on_cpu_with_the_tiny_model(tmp_path):
    """The benchmark's --tiny smoke run: stock and engine measured, JSON written, images equal."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_throughput.py"
    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, str(script), "--tiny", "--stock-batches", "2", "--engine-batches", "2",
                           "--variants", "eager,attention=flash,fp8", "--reps", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    runs = {r["label"]: r for r in report["runs"]}
    assert report["device_type"] == "cpu" and report["stock_best_images_per_s"] > 0
    assert runs["eager"]["vs_stock"]["max_abs_uint8"] <= 1
    assert runs["attention=flash"]["vs_eager"]["max_abs_uint8"] <= 1
    assert "compute capability" in runs["fp8"]["skipped"]
    assert "attention=flash" in done.stdout


def test_gpu_benchmark_measures_sdxl_and_sdbatch_run_on_cpu(tmp_path):
    """--family sdxl: stock StableDiffusionXLPipeline and the engine give the same images, and the
    end-to-end `sdbatch run` part reports its rows per second."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_throughput.py"
    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, str(script), "--family", "sdxl", "--tiny", "--stock-batches", "2",
                           "--engine-batches", "2", "--variants", "eager", "--reps", "1", "--no-sync-check",
                           "--end-to-end", "4", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    runs = {r["label"]: r for r in report["runs"]}
    assert report["family"] == "sdxl" and report["scheduler"] == "euler"
    assert runs["eager"]["vs_stock"]["max_abs_uint8"] <= 1
    assert runs["sdbatch run --executor local"]["images_per_s"] > 0


def test_padding_keeps_sdxl_rows_and_their_added_conditioning(family_models):
    """SDXL's UNet takes per-sample pooled embeddings and time ids besides the hidden states:
    padding pads them with the samples, and real rows come out as unpadded (eager UNet, padded as
    compile pads it, so that no compile is needed here)."""
    from helpers import xl_rows

    from sdbatch.pipeline.speed.static_batch import SpeedStats, StaticBatchRunner

    settings = BatchSettings(32, 32, STEPS, "euler")
    rows = xl_rows(3)
    plain = BatchedEngine(load_model(family_models["xl"], "cpu", "fp32"))
    padded = BatchedEngine(load_model(family_models["xl"], "cpu", "fp32"))
    stats = SpeedStats()
    padded.speed.unet = StaticBatchRunner(padded.pipe.unet, name="unet", device=padded.device, stats=stats,
                                          pad=True, compiled=False, sizes=(8, 16))  # batch size 8
    for a, b in zip(padded.generate(settings, rows).images, plain.generate(settings, rows).images):
        assert_close(a, b)
    assert stats.padded_samples["unet"] > 0


def test_unguided_batches_are_not_padded_to_guided_size(eager, tiny_base):
    """Rows with guidance <= 1 cost one UNet sample: a job of such rows pads to one sample per row
    of the batch size, not two; a guided batch then takes the two-per-row size; real rows are kept."""
    from sdbatch.pipeline.speed.static_batch import SpeedStats, StaticBatchRunner

    engine = BatchedEngine(load_model(tiny_base, "cpu", "fp32"))
    stats = SpeedStats()
    engine.speed.unet = StaticBatchRunner(engine.pipe.unet, name="unet", device=engine.device, stats=stats,
                                          pad=True, compiled=False)
    engine.speed.reserve(BATCH)  # what a job's batch size does
    settings = BatchSettings(32, 32, STEPS, "ddim")
    unguided = [RowInput(f"turbo {i}", seed=60 + i, guidance_scale=1.0) for i in range(BATCH - 1)]
    padded = []
    guided = [mixed_rows(BATCH)[i] for i in (0, 2, 3)]  # guidance 7.5, 3.0, 12.0
    for batch in (unguided, guided):
        before = stats.padded_samples.get("unet", 0)
        for a, b in zip(engine.generate(settings, batch).images, eager.generate(settings, batch).images):
            assert_close(a, b)
        padded.append((stats.padded_samples.get("unet", 0) - before) // STEPS)
    assert padded == [1, 2]  # 3 samples -> 4 (one per row); 6 samples -> 8 (two per row)


def test_lora_batches_on_a_compiled_engine_equal_eager_and_plain_batches_stay_compiled(eager, compiled, tiny_adapters):
    """A LoRA batch on a compiled model runs the UNet eagerly with its separate QKV projections
    (the fused ones would bypass the adapter layers: wrong images, no error); the plain batch after
    it goes back to the compiled graph, and both equal eager."""
    import hashlib

    from sdbatch.pipeline.batch import LoraWeight

    def lora(name, weight):
        path = tiny_adapters[name]
        return LoraWeight(path, weight, hashlib.sha256(open(path, "rb").read()).hexdigest())

    rows = mixed_rows(BATCH)
    for loras in ((lora("lora-b", 1.0),), (lora("lora-a", 0.8), lora("lora-b", 0.5)), ()):
        settings = BatchSettings(32, 32, STEPS, "ddim", loras=loras)
        for a, b in zip(compiled.generate(settings, rows).images, eager.generate(settings, rows).images):
            assert_close(a, b)
    plain = BatchSettings(32, 32, STEPS, "ddim")
    with_lora = BatchSettings(32, 32, STEPS, "ddim", loras=(lora("lora-b", 1.0),))
    assert np.abs(np.asarray(eager.generate(with_lora, rows).images[0], dtype=int)
                  - np.asarray(eager.generate(plain, rows).images[0], dtype=int)).max() > 1  # the LoRA acts
    assert compiled.speed.unet_for(adapters=False) is compiled.speed.unet  # plain: the compiled runner
    assert compiled.speed.projections is None or compiled.speed.projections.fused


def test_lora_jobs_with_quantize_are_refused_before_any_row(tiny_base, tiny_adapters, tmp_path):
    """fp8 layers take no LoRA adapters: the rows naming one are refused at planning (exit 2), on
    every executor, before the model loads."""
    from helpers import invoke, write_manifest

    manifest = write_manifest(tmp_path / "m.parquet", {"prompt": ["a", "b"], "loras": ["lora-b:0.5", None],
                                                      "steps": [2, 2]})
    result = invoke("run", str(manifest), "--out", str(tmp_path / "out"), "--model", tiny_base, "--device", "cpu",
                    "--executor", "local", "--lora-dir", tiny_adapters["loras"], "--quantize", "fp8")
    assert result.exit_code == 2, result.output
    assert "column 'loras', row 0 (1 row)" in result.output and "quantize fp8" in result.output
    assert not (tmp_path / "out" / "metadata").exists()


def test_run_with_compile_gives_the_images_of_eager_and_reports_compile_time(compiled, tiny_base, tiny_adapters,
                                                                             tmp_path):
    """`sdbatch run --compile on` end to end, on a job mixing LoRA and plain rows: the same images
    as `--compile off` (LoRA batches run eagerly, the rest compiled), compile seconds in
    summary.json (the compile cache of the session makes it cheap here)."""
    import json

    import pyarrow.dataset as ds
    from PIL import Image

    from helpers import invoke, write_manifest

    manifest = write_manifest(tmp_path / "m.parquet", {
        "id": [f"r{i}" for i in range(6)], "prompt": [f"a prompt {i}" for i in range(6)],
        "seed": list(range(6)), "steps": [STEPS] * 6, "scheduler": ["ddim"] * 6,
        "guidance_scale": [7.5, 1.0, 4.0, 7.5, 7.5, 2.0],
        "loras": [None, "lora-b:0.9", None, "lora-a:0.5,lora-b:0.5", "lora-b:0.9", None]})
    images = {}
    for switch in ("off", "on"):
        out = tmp_path / switch
        result = invoke("run", str(manifest), "--out", str(out), "--model", tiny_base, "--device", "cpu",
                        "--executor", "local", "--batch-size", str(BATCH), "--compile", switch,
                        "--lora-dir", tiny_adapters["loras"])
        assert result.exit_code == 0, result.output
        meta = ds.dataset(str(out / "metadata"), format="parquet").to_table().to_pylist()
        images[switch] = {r["id"]: np.asarray(Image.open(out / r["image"])).astype(int) for r in meta}
        seconds = json.loads((out / "_job" / "summary.json").read_text())["per_worker"]["local"]["compile_seconds"]
        assert (seconds > 0) == (switch == "on")
    assert max(np.abs(images["on"][k] - images["off"][k]).max() for k in images["off"]) <= 1


def test_run_refuses_what_this_machine_cannot_do_before_any_row(tiny_base, tmp_path):
    from helpers import invoke, write_manifest

    manifest = write_manifest(tmp_path / "m.parquet", {"prompt": ["a"], "steps": [2]})
    common = ["run", str(manifest), "--model", tiny_base, "--device", "cpu", "--executor", "local"]
    fp8 = invoke(*common, "--out", str(tmp_path / "fp8"), "--quantize", "fp8")
    assert fp8.exit_code == 2 and "fp8 needs a CUDA GPU of compute capability >= 8.9" in fp8.output
    graphs = invoke(*common, "--out", str(tmp_path / "graphs"), "--cuda-graphs", "on", "--compile", "on")
    assert graphs.exit_code == 2 and "cuda_graphs=on needs a CUDA device" in graphs.output
    bad = invoke(*common, "--out", str(tmp_path / "bad"), "--compile", "maybe")
    assert bad.exit_code == 2 and "maybe" in bad.output
    assert not (tmp_path / "fp8" / "metadata").exists()
