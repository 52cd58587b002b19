"""Textual inversion and LoRA in the engine: rows equal stock diffusers with the same
``load_textual_inversion``, ``load_lora_weights`` and ``set_adapters`` weights, whatever order the
LoRA groups come in (an adapter never lingers into the next group), and batch-invariant."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from PIL import Image
from safetensors.torch import load_file, save_file

from helpers import invoke, write_manifest
from helpers import stock_row_kwargs, to_uint8
from sdbatch.jobs.planning import plan_manifest
from sdbatch.jobs.store.outdir import OutputFolder
from sdbatch.jobs.store.storage import LocalStorage
from sdbatch.jobs.worker.shard_worker import ShardWorker
from sdbatch.jobs.worker.worker_config import WorkerConfig
from sdbatch.manifests.source import open_manifest
from sdbatch.pipeline.adapters import load_embedding
from sdbatch.pipeline.batch import LoraWeight
from sdbatch.pipeline.engine import BatchedEngine, BatchSettings, RowInput
from sdbatch.pipeline.loading import load_model
from sdbatch.pipeline.schedulers import make_scheduler
from helpers import assert_close

STEPS = 3
SETTINGS = BatchSettings(32, 32, STEPS, "ddim")
TOKEN = "<tiny-style>"


def sha256(path: str) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def lora(path: str, weight: float) -> LoraWeight:
    return LoraWeight(path, weight, sha256(path))


def stock_pipe(cls, folder: str):
    pipe = cls.from_pretrained(folder, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler(SETTINGS.scheduler, pipe.scheduler)
    return pipe


def stock_image(pipe, row: RowInput, family: str = "sd") -> np.ndarray:
    return to_uint8(pipe(**stock_row_kwargs(row, SETTINGS, family), output_type="np").images[0])


def differ(a: np.ndarray, b: np.ndarray) -> bool:
    return np.abs(a.astype(int) - b.astype(int)).max() > 5


ROWS = [RowInput(f"a {TOKEN} fox in the snow", seed=41, negative_prompt="blurry"),
        RowInput("an old lighthouse", seed=42, guidance_scale=1.0),
        RowInput("a tall tower", seed=43, negative_prompt="ugly")]


# -- textual inversion ---------------------------------------------------------------------------
def test_textual_inversion_rows_equal_stock_sd(tiny_base, tiny_adapters):
    engine = BatchedEngine(load_model(tiny_base, "cpu", "fp32"))
    assert load_embedding(engine.model, tiny_adapters["embedding"], TOKEN) == ["text_encoder"]
    pipe = stock_pipe(StableDiffusionPipeline, tiny_base)
    plain = stock_image(pipe, ROWS[0])
    pipe.load_textual_inversion(tiny_adapters["embedding"], token=TOKEN)
    images = engine.generate(SETTINGS, ROWS[:2]).images
    assert_close(images[0], stock_image(pipe, ROWS[0]))
    assert differ(images[0], plain)  # the token means its vectors, not its letters
    assert_close(images[1], stock_image(pipe, ROWS[1]))


def test_textual_inversion_goes_into_both_sdxl_encoders(family_models, tiny_adapters):
    engine = BatchedEngine(load_model(family_models["xl"], "cpu", "fp32"))
    assert load_embedding(engine.model, tiny_adapters["embedding-xl"], TOKEN) == ["text_encoder", "text_encoder_2"]
    pipe = stock_pipe(StableDiffusionXLPipeline, family_models["xl"])
    vectors = load_file(tiny_adapters["embedding-xl"])
    pipe.load_textual_inversion(vectors["clip_l"], token=TOKEN, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(vectors["clip_g"], token=TOKEN, text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    image = engine.generate(SETTINGS, ROWS[:1]).images[0]
    assert_close(image, stock_image(pipe, ROWS[0], "sdxl"))


def test_an_embedding_that_fits_no_encoder_is_refused(tiny_base, tmp_path):
    path = tmp_path / "wide.safetensors"
    save_file({TOKEN: torch.zeros(1, 99)}, str(path))
    with pytest.raises(ValueError, match="fits none"):
        load_embedding(load_model(tiny_base, "cpu", "fp32"), str(path), TOKEN)


# -- LoRA ----------------------------------------------------------------------------------------
def test_lora_groups_equal_stock_in_any_order(tiny_base, tiny_adapters):
    """Two LoRA groups (one with text-encoder weights, one UNet-only), both together and a no-LoRA
    group, one engine, several orders; the second pass with a cache of one adapter."""
    a, b = tiny_adapters["lora-a"], tiny_adapters["lora-b"]
    pipe = stock_pipe(StableDiffusionPipeline, tiny_base)
    rows = ROWS[1:]
    reference = {"none": [stock_image(pipe, r) for r in rows]}
    pipe.load_lora_weights(a, adapter_name="a")
    pipe.load_lora_weights(b, adapter_name="b")
    groups = {"none": (), "a": (lora(a, 0.7),), "b": (lora(b, 1.2),), "ab": (lora(a, 0.5), lora(b, 0.8))}
    for name, names, weights in (("a", ["a"], [0.7]), ("b", ["b"], [1.2]), ("ab", ["a", "b"], [0.5, 0.8])):
        pipe.set_adapters(names, adapter_weights=weights)
        reference[name] = [stock_image(pipe, r) for r in rows]
    assert differ(reference["a"][0], reference["none"][0]) and differ(reference["b"][0], reference["none"][0])

    engine = BatchedEngine(load_model(tiny_base, "cpu", "fp32"))
    for capacity, order in ((8, ["a", "none", "b", "ab", "a"]), (1, ["ab", "b", "none", "a", "b"])):
        engine.adapters.capacity = capacity
        for name in order:
            images = engine.generate(replace(SETTINGS, loras=groups[name]), rows).images
            for image, expected in zip(images, reference[name]):
                assert_close(image, expected)
            assert len(engine.adapters.loaded) <= max(capacity, len(groups[name]))


def test_lora_rows_are_batch_invariant(tiny_base, tiny_adapters):
    engine = BatchedEngine(load_model(tiny_base, "cpu", "fp32"))
    settings = replace(SETTINGS, loras=(lora(tiny_adapters["lora-a"], 0.9),))
    rows = ROWS[1:] + [RowInput("a (small:1.3) boat", seed=44, negative_prompt="ugly", prompt_syntax="a1111",
                                clip_skip=1)]
    batch = engine.generate(settings, rows).images
    for k, row in enumerate(rows):
        assert_close(engine.generate(settings, [row]).images[0], batch[k])


def test_sdxl_lora_equals_stock(family_models, tiny_adapters):
    engine = BatchedEngine(load_model(family_models["xl"], "cpu", "fp32"))
    pipe = stock_pipe(StableDiffusionXLPipeline, family_models["xl"])
    pipe.load_lora_weights(tiny_adapters["lora-xl"], adapter_name="xl")
    pipe.set_adapters(["xl"], adapter_weights=[0.6])
    row = RowInput("a red fox", seed=45, negative_prompt="blurry", prompt_2="oil painting")
    image = engine.generate(replace(SETTINGS, loras=(lora(tiny_adapters["lora-xl"], 0.6),)), [row]).images[0]
    assert_close(image, stock_image(pipe, row, "sdxl"))


def test_tiny_lora_command_writes_a_lora_diffusers_loads(tmp_path, tiny_base):
    result = invoke("tiny-lora", str(tmp_path), "--model", tiny_base, "--name", "style", "--seed", "5")
    assert result.exit_code == 0, result.output
    path = tmp_path / "style.safetensors"
    keys = set(load_file(str(path)))
    assert any(k.startswith("unet.") for k in keys) and any(k.startswith("text_encoder.") for k in keys)
    pipe = stock_pipe(StableDiffusionPipeline, tiny_base)
    pipe.load_lora_weights(str(path), adapter_name="style")
    assert "style" in pipe.get_list_adapters()["unet"]


def test_one_shard_of_lora_groups_in_any_row_order_equals_stock(tmp_path, tiny_base, tiny_adapters):
    """A shard whose rows interleave two LoRA groups and a no-LoRA group (the planner never makes
    one, but a worker must not care): every row equals stock, and the worker runs the groups so
    that the adapters change twice, not once per interleaving."""
    groups = ["lora-a:0.7", None, "lora-b:1.2"] * 2
    manifest = write_manifest(tmp_path / "m.parquet", {
        "id": [f"r{i}" for i in range(6)], "prompt": [f"a red fox {i}" for i in range(6)],
        "seed": pa.array(range(6), pa.uint64()), "steps": [STEPS] * 6, "scheduler": ["ddim"] * 6, "loras": groups})
    storage = LocalStorage(tmp_path / "out")
    folder = OutputFolder(storage)
    planned = plan_manifest(open_manifest(str(manifest)), tiny_base, 1000, storage.staging_folder())
    one = tmp_path / "one-shard.parquet"
    pq.write_table(pa.concat_tables([pq.read_table(planned.planner.staged_file(s.name)) for s in planned.shards]).sort_by(
        "row_index"), one)
    folder.move_inputs_in("00000", one)
    worker = ShardWorker(folder, WorkerConfig(device="cpu", batch_size=4, lora_dir=tiny_adapters["loras"]))
    try:
        worker.load([tiny_base])
        stats = list(worker.run_shard("00000"))[-1]
    finally:
        worker.close()
    assert stats.ok == 6
    assert worker.engine(tiny_base).adapters.switches == 2  # none, then a, then b
    rows = {r["id"]: r for r in ds.dataset(str(tmp_path / "out" / "metadata"), format="parquet").to_table().to_pylist()}
    pipe = stock_pipe(StableDiffusionPipeline, tiny_base)
    pipe.load_lora_weights(tiny_adapters["lora-a"], adapter_name="a")
    pipe.load_lora_weights(tiny_adapters["lora-b"], adapter_name="b")
    for adapter, weight, ids in (("a", 0.7, ("r0", "r3")), (None, 0, ("r1", "r4")), ("b", 1.2, ("r2", "r5"))):
        if adapter:
            pipe.enable_lora()
            pipe.set_adapters([adapter], adapter_weights=[weight])
        else:
            pipe.disable_lora()
        for row_id in ids:
            row = RowInput(rows[row_id]["prompt"], seed=rows[row_id]["seed"])
            got = np.asarray(Image.open(tmp_path / "out" / rows[row_id]["image"]).convert("RGB"))
            assert_close(got, stock_image(pipe, row))


def test_two_adapters_are_applied_in_the_order_of_their_names_whatever_the_row_wrote(tmp_path, tiny_base,
                                                                                      tiny_adapters):
    """peft sums adapter layers in ``set_adapters``' order, and the order moves stock diffusers'
    own images by rounding: sdbatch applies a row's LoRAs sorted by name (their normal form,
    README), so the same set written in any order is one batch, one id and one image."""
    from sdbatch.pipeline.adapters import adapter_name

    manifest = write_manifest(tmp_path / "m.parquet", {
        "id": ["ba", "ab"], "prompt": ["a red fox", "a red fox"], "seed": pa.array([1, 1], pa.uint64()),
        "steps": [2, 2], "scheduler": ["ddim"] * 2, "loras": ["lora-b:0.5,lora-a:0.8", "lora-a:0.8,lora-b:0.5"]})
    storage = LocalStorage(tmp_path / "out")
    folder = OutputFolder(storage)
    planned = plan_manifest(open_manifest(str(manifest)), tiny_base, 1000, storage.staging_folder())
    assert len(planned.shards) == 1
    folder.move_inputs_in("00000", planned.planner.staged_file(planned.shards[0].name))
    worker = ShardWorker(folder, WorkerConfig(device="cpu", batch_size=4, lora_dir=tiny_adapters["loras"]))
    try:
        worker.load([tiny_base])
        stats = list(worker.run_shard("00000"))[-1]
        engine = worker.engine(tiny_base)
        applied = engine.pipe.get_active_adapters()
    finally:
        worker.close()
    assert stats.ok == 2 and engine.adapters.switches == 1  # one set, one batch
    by_name = {tiny_adapters[n]: n for n in ("lora-a", "lora-b")}
    names = {adapter_name(lora(path, 1.0)): by_name[path] for path in by_name}
    assert [names[a] for a in applied] == ["lora-a", "lora-b"]
    rows = ds.dataset(str(tmp_path / "out" / "metadata"), format="parquet").to_table().to_pylist()
    assert {r["loras"] for r in rows} == {"lora-a:0.8,lora-b:0.5"}


def test_a_lora_of_another_family_fails_its_batch_and_leaves_the_model_clean(tiny_base, tiny_adapters):
    engine = BatchedEngine(load_model(tiny_base, "cpu", "fp32"))
    before = engine.generate(SETTINGS, ROWS[1:]).images
    with pytest.raises(ValueError, match="does not fit model"):
        engine.generate(replace(SETTINGS, loras=(lora(tiny_adapters["lora-xl"], 1.0),)), ROWS[1:])
    assert np.array_equal(engine.generate(SETTINGS, ROWS[1:]).images, before)
