"""Prompt syntaxes, clip skip, embeddings and LoRAs through `sdbatch validate`, `sweep` and `run`:
what cannot run is refused naming column and rows, a LoRA weight x seed sweep runs end to end to
stock diffusers' images, metadata says how each row was made, and a resume refuses a changed LoRA."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from helpers import invoke, write_manifest
from helpers import to_uint8
from sdbatch.manifests.normalise import normalise_batch
from sdbatch.pipeline.schedulers import make_scheduler
from sdbatch.pipeline.tiny_adapters import write_tiny_lora
from helpers import assert_close

TOKEN = "<tiny-style>"


def metadata(out: Path) -> dict[str, dict]:
    return {r["id"]: r for r in ds.dataset(str(out / "metadata"), format="parquet").to_table().to_pylist()}


def image(out: Path, row: dict) -> np.ndarray:
    return np.asarray(Image.open(out / row["image"]).convert("RGB"))


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_ids_of_rows_that_use_no_new_column_are_unchanged():
    """Derived ids computed by sdbatch before prompt_syntax, clip_skip and loras existed."""
    batch = pa.RecordBatch.from_pydict({
        "prompt": ["a red fox (in the snow:1.2)", "an old lighthouse"], "seed": pa.array([7, None], pa.uint64()),
        "guidance_scale": [7.5, 3.0], "negative_prompt": ["blurry", None], "steps": [20, 30]})
    assert normalise_batch(batch, "tiny").column("id").to_pylist() == ["r20f6690be9743862e53c402a",
                                                                        "r29603b7dd48675258b408e52"]
    xl = pa.RecordBatch.from_pydict({"prompt": ["a cat"], "prompt_2": ["oil painting"], "crop_top": [8]})
    assert normalise_batch(xl, "tiny:xl").column("id").to_pylist() == ["r64a185fe09edc716cb6055cb"]
    # a row that says what the default says keeps its id too; one that asks for more gets another
    explicit = pa.RecordBatch.from_pydict({"prompt": ["an old lighthouse"], "seed": pa.array([None], pa.uint64()),
                                           "guidance_scale": [3.0], "steps": [30], "prompt_syntax": ["plain"],
                                           "loras": [""]})
    assert normalise_batch(explicit, "tiny").column("id").to_pylist() == ["r29603b7dd48675258b408e52"]
    assert normalise_batch(explicit, "tiny", "a1111").column("id").to_pylist() == ["r29603b7dd48675258b408e52"]
    a1111 = pa.RecordBatch.from_pydict({"prompt": ["an old lighthouse"], "guidance_scale": [3.0], "steps": [30],
                                        "seed": pa.array([None], pa.uint64())})
    assert normalise_batch(a1111, "tiny", "a1111").column("id").to_pylist() != ["r29603b7dd48675258b408e52"]


def test_a1111_lora_tags_mean_the_loras_column():
    batch = pa.RecordBatch.from_pydict({
        "prompt": ["a fox <lora:b:0.5>, <lora:a>", "a fox <lora:b:0.5>, <lora:a>", "a fox , "],
        "prompt_syntax": ["a1111", "plain", "a1111"], "loras": [None, None, "b:0.50,a:1.0"]})
    rows = normalise_batch(batch, "tiny").select(["prompt", "loras", "id"]).to_pylist()
    assert rows[0]["prompt"] == "a fox , " and rows[0]["loras"] == "a:1,b:0.5"
    assert rows[1]["loras"] is None  # plain rows read tags as text, as stock diffusers does
    assert rows[2]["loras"] == "a:1,b:0.5" and rows[2]["id"] == rows[0]["id"]


def test_validate_and_run_refuse_what_cannot_run_naming_column_and_rows(tmp_path, tiny_base, tiny_adapters):
    manifest = write_manifest(tmp_path / "m.parquet", {
        "prompt": ["ok", "a fox", "a (fox", "a <lora:x:abc> fox", "a <no-such-token> fox", "a cat", "a dog", "an owl"],
        "loras": [None, "lora-a:0.5", None, None, None, "lora-a:high", "missing:1", "lora-a:1,lora-a:2"],
        "prompt_syntax": [None, None, "a1111", "a1111", None, None, None, None],
        "clip_skip": pa.array([None, 1, None, None, None, None, None, None], pa.int64()),
    })
    args = [str(manifest), "--model", tiny_base, "--lora-dir", tiny_adapters["loras"],
            "--embedding", tiny_adapters["embedding"]]
    result = invoke("validate", *args)
    assert result.exit_code == 2, result.output
    assert "column 'prompt', row 2 (1 row): a1111 prompt: unbalanced brackets" in result.output
    assert "column 'prompt', row 3 (1 row): a LoRA weight is not a number" in result.output
    assert "column 'loras', row 5 (1 row): a LoRA weight is not a number" in result.output
    assert "column 'loras', row 7 (1 row): a LoRA given twice (lora-a)" in result.output
    result = invoke("validate", *args, "--prompt-syntax", "compel")
    assert "column 'clip_skip', row 1 (1 row): not available with prompt_syntax compel" in result.output

    good_syntax = write_manifest(tmp_path / "names.parquet", {
        "prompt": ["ok", "a fox", "a <no-such-token> fox", "an owl"],
        "loras": [None, "lora-a:0.5", None, "missing:1"]})
    result = invoke("validate", str(good_syntax), "--model", tiny_base, "--lora-dir", tiny_adapters["loras"],
                    "--embedding", tiny_adapters["embedding"])
    assert result.exit_code == 2, result.output
    assert "column 'loras', row 3 (1 row): unknown LoRA 'missing'" in result.output
    assert f"column 'prompt', row 2 (1 row): unknown embedding token <no-such-token> (--embedding gives {TOKEN}" \
        in result.output
    run = invoke("run", str(good_syntax), "--model", tiny_base, "--out", str(tmp_path / "out"), "--executor", "local",
                 "--lora-dir", tiny_adapters["loras"], "--embedding", tiny_adapters["embedding"])
    assert run.exit_code == 2 and "unknown LoRA 'missing'" in run.output and "<no-such-token>" in run.output
    assert not (tmp_path / "out" / "images").exists()
    # without embeddings, <...> in a prompt is text (prompts hold <b> and the like): noted, not refused
    html = write_manifest(tmp_path / "html.parquet", {"prompt": ["an owl <b>bold</b>"]})
    result = invoke("validate", str(html), "--model", tiny_base)
    assert result.exit_code == 0 and "note: column 'prompt', 1 row(s): <b> is read as text" in result.output


def stock_lora_image(folder: str, lora: str | None, weight: float, row: dict, steps: int) -> np.ndarray:
    pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler(None, pipe.scheduler)
    if lora:
        pipe.load_lora_weights(lora, adapter_name="lora")
        pipe.set_adapters(["lora"], adapter_weights=[weight])
    out = pipe(row["prompt"], num_inference_steps=steps, guidance_scale=row["guidance_scale"], height=32, width=32,
               generator=torch.Generator("cpu").manual_seed(row["seed"]), output_type="np")
    return to_uint8(out.images[0])


def test_lora_weight_by_seed_sweep_runs_end_to_end(tmp_path, tiny_base):
    loras = tmp_path / "loras"
    assert invoke("tiny-lora", str(loras), "--model", tiny_base, "--name", "style").exit_code == 0
    manifest = tmp_path / "sweep.parquet"
    result = invoke("sweep", "-o", str(manifest), "--prompt", "a red fox", "--loras", "none",
                    "--loras", "style:0.2..1.0/0.4", "--seeds", "0-1", "--steps", "3")
    assert result.exit_code == 0 and "x 4 loras = 8 rows" in result.output, result.output
    out = tmp_path / "out"
    args = ["run", str(manifest), "--model", tiny_base, "--out", str(out), "--executor", "local",
            "--lora-dir", str(loras), "--batch-size", "3"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    meta = metadata(out)
    assert len(meta) == 8 and all(r["status"] == "ok" for r in meta.values())
    digest = sha256(loras / "style.safetensors")
    assert {r["loras"] for r in meta.values()} == {None, "style:0.2", "style:0.6", "style:1"}
    for row in meta.values():
        if row["loras"]:
            weight = float(row["loras"].split(":")[1])
            assert row["lora_files"] == [{"name": "style", "weight": weight, "sha256": digest}]
        else:
            assert row["lora_files"] is None
    for row_id in ("s1-l0", "s0-l2"):  # no LoRA, and style at 0.6
        row = meta[row_id]
        weight = float(row["loras"].split(":")[1]) if row["loras"] else 0.0
        expected = stock_lora_image(tiny_base, str(loras / "style.safetensors") if row["loras"] else None,
                                    weight, row, 3)
        assert_close(image(out, row), expected)
    parameters = Image.open(out / meta["s0-l2"]["image"]).info["parameters"]
    assert "a red fox <lora:style:0.6>" in parameters and f"Lora hashes: \"style: {digest[:12]}\"" in parameters

    # a changed LoRA file is a changed job: resume refuses it
    write_tiny_lora(loras, tiny_base, "style", seed=9)
    again = invoke(*args)
    assert again.exit_code == 2 and "--lora style" in again.output, again.output


def test_syntaxes_embeddings_and_clip_skip_through_run(tmp_path, tiny_base, tiny_adapters):
    long_prompt = " ".join("abcdefg"[i % 7] for i in range(100))
    manifest = write_manifest(tmp_path / "m.parquet", {
        "id": ["tag", "column", "emb", "long", "compel"],
        "prompt": ["a red fox <lora:lora-a:0.6>", "a red fox ", f"a {TOKEN} cat", long_prompt, "a (cat)1.3"],
        "loras": [None, "lora-a:0.6", None, None, None],
        "prompt_syntax": ["a1111", "a1111", None, "plain", "compel"],
        "clip_skip": pa.array([None, None, 1, None, None], pa.int64()),
        "seed": pa.array([1, 1, 2, 3, 4], pa.uint64()),
        "steps": [3] * 5,
    })
    out = tmp_path / "out"
    result = invoke("run", str(manifest), "--model", tiny_base, "--out", str(out), "--executor", "local",
                    "--lora-dir", tiny_adapters["loras"], "--embedding", tiny_adapters["embedding"])
    assert result.exit_code == 0, result.output
    meta = metadata(out)
    assert all(r["status"] == "ok" for r in meta.values())
    assert np.array_equal(image(out, meta["tag"]), image(out, meta["column"]))
    assert meta["tag"]["prompt"] == "a red fox " and meta["tag"]["loras"] == "lora-a:0.6"
    assert (meta["emb"]["clip_skip"], meta["emb"]["prompt_syntax"]) == (1, "plain")
    assert (meta["long"]["prompt_tokens"], meta["long"]["truncated"]) == (100, True)
    assert meta["emb"]["truncated"] is False and meta["compel"]["prompt_syntax"] == "compel"
    assert "Clip skip: 2" in Image.open(out / meta["emb"]["image"]).info["parameters"]


def test_lora_names_resolve_in_an_s3_lora_dir_and_pickles_are_refused(tmp_path, tiny_adapters, endpoint, client,
                                                                         bucket):
    from helpers import put
    from sdbatch.jobs.worker.adapter_files import AdapterError, LoraFiles
    from sdbatch.manifests.remote import S3Options

    data = Path(tiny_adapters["lora-a"]).read_bytes()
    put(client, bucket, "loras/style.safetensors", data)
    found = LoraFiles(f"s3://{bucket}/loras", S3Options(endpoint_url=endpoint)).resolve("style")
    assert Path(found.path).read_bytes() == data and found.sha256 == hashlib.sha256(data).hexdigest()
    with pytest.raises(AdapterError, match="unknown LoRA 'other'"):
        LoraFiles(f"s3://{bucket}/loras", S3Options(endpoint_url=endpoint)).resolve("other")
    (tmp_path / "old.ckpt").write_bytes(b"not a safetensors file")
    with pytest.raises(AdapterError, match="safetensors only"):
        LoraFiles(str(tmp_path)).resolve("old")
    (tmp_path / "fake.safetensors").write_bytes(b"garbage")
    with pytest.raises(AdapterError, match="not a safetensors file"):
        LoraFiles(str(tmp_path)).resolve("fake")
