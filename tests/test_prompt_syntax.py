"""Prompts as people write them, for SD 1.x/2.x and SDXL alike: AUTOMATIC1111's weighting and long
prompts, compel's syntax and diffusers' clip skip equal what stock diffusers (or A1111's algorithm,
computed here independently) gives, and rows of different lengths share a batch without changing
each other's images."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from helpers import stock_row_kwargs, to_uint8
from sdbatch.pipeline.conditioning import text_facts
from sdbatch.pipeline.engine import BatchedEngine, BatchSettings, RowInput
from sdbatch.pipeline.loading import load_model
from sdbatch.pipeline.modes import ModeError
from sdbatch.pipeline.prompt_syntax import a1111_problem, parse_a1111
from sdbatch.pipeline.schedulers import make_scheduler
from sdbatch.pipeline.text import TextRequest
from helpers import assert_close

STEPS = 3
SETTINGS = BatchSettings(32, 32, STEPS, "euler")


@pytest.fixture(scope="module")
def engines(tiny_base, family_models):
    return {"sd": BatchedEngine(load_model(tiny_base, "cpu", "fp32")),
            "xl": BatchedEngine(load_model(family_models["xl"], "cpu", "fp32"))}


@pytest.fixture(scope="module")
def stock(tiny_base, family_models):
    pipes = {"sd": StableDiffusionPipeline.from_pretrained(tiny_base, torch_dtype=torch.float32),
             "xl": StableDiffusionXLPipeline.from_pretrained(family_models["xl"], torch_dtype=torch.float32)}
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
        pipe.scheduler = make_scheduler(SETTINGS.scheduler, pipe.scheduler)
    return pipes


def stock_image(pipe, family: str, row: RowInput, **override) -> np.ndarray:
    kwargs = stock_row_kwargs(row, SETTINGS, "sdxl" if family == "xl" else "sd")
    if "prompt_embeds" in override:
        for name in ("prompt", "negative_prompt", "prompt_2", "negative_prompt_2"):
            kwargs.pop(name, None)
    kwargs.update(override)
    return to_uint8(pipe(**kwargs, output_type="np").images[0])


def words(n: int, at: dict[int, str] | None = None) -> str:
    """n one-token words (each letter is one token for the tiny tokenizer), ``at`` replacing some."""
    at = at or {}
    return " ".join(at.get(i, "abcdefg"[i % 7]) for i in range(n))


# -- the grammar ---------------------------------------------------------------------------------
def test_a1111_parser_gives_automatic1111s_own_examples():
    # AUTOMATIC1111's parse_prompt_attention doctests
    assert parse_a1111("normal text") == [("normal text", 1.0)]
    assert parse_a1111("an (important) word") == [("an ", 1.0), ("important", 1.1), (" word", 1.0)]
    assert parse_a1111(r"\(literal\]") == [("(literal]", 1.0)]
    assert parse_a1111("(unnecessary)(parens)") == [("unnecessaryparens", 1.1)]
    got = parse_a1111("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")
    expected = [("a ", 1.0), ("house", 1.3 * 1.1 * 1.1), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
                (", sun, ", 1.1), ("sky", 1.1 ** 4), (".", 1.1)]
    assert [f for f, _ in got] == [f for f, _ in expected]
    assert np.allclose([w for _, w in got], [w for _, w in expected])
    assert parse_a1111("a BREAK b") == [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]


@pytest.mark.parametrize("text", ["(unclosed", "closed)", "[square", "(mixed]", "(a:1.2.3)"])
def test_unbalanced_a1111_brackets_are_named(text):
    assert a1111_problem(text)
    assert a1111_problem(text.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")) is None


# -- a1111 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["sd", "xl"])
def test_a1111_without_weights_equals_plain(engines, family):
    rows = [RowInput("a red fox, in the snow", seed=5, negative_prompt="blurry"),
            RowInput("an old lighthouse at dusk", seed=6, guidance_scale=1.0),
            RowInput("a tower", seed=7, negative_prompt="")]
    plain = engines[family].generate(SETTINGS, rows).images
    a1111 = engines[family].generate(SETTINGS, [replace(r, prompt_syntax="a1111") for r in rows]).images
    assert np.array_equal(plain, a1111)


def test_a1111_weighted_prompt_gives_a1111s_embedding(engines):
    """A1111's algorithm, step by step: each fragment tokenised alone, one 77-token chunk, hidden
    states times the token weights, then scaled back to the unweighted mean."""
    encoder = engines["sd"].conditioner.prompts
    tok, te = encoder.tokenizer, encoder.text_encoder
    fragments = [("a ", 1.0), ("red", 1.5), (" fox ", 1.0), ("in the snow", 1 / 1.1)]
    ids, weights = [tok.bos_token_id], [1.0]
    for text, weight in fragments:
        piece = tok(text, add_special_tokens=False).input_ids
        ids += piece
        weights += [weight] * len(piece)
    ids += [tok.eos_token_id] * (77 - len(ids))
    weights += [1.0] * (77 - len(weights))
    with torch.no_grad():
        z = te(torch.tensor([ids])).last_hidden_state[0]
    weighted = z * torch.tensor(weights).unsqueeze(-1)
    expected = weighted * (z.mean() / weighted.mean())

    request = TextRequest("a (red:1.5) fox [in the snow]", "a1111")
    got = encoder.encode([request])[request].hidden
    assert got.shape == (77, z.shape[-1])
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, z, atol=1e-3)


def test_a1111_breaks_and_long_prompts_make_chunks(engines):
    encoder = engines["sd"].conditioner.prompts
    requests = [TextRequest("a cat BREAK a dog", "a1111"), TextRequest(words(160), "a1111"),
                TextRequest(words(160), "plain")]
    encoded = encoder.encode(requests)
    assert [encoded[r].hidden.shape[0] for r in requests] == [154, 231, 77]
    # a chunk is encoded alone: the second chunk of "a cat BREAK a dog" is "a dog"'s first
    alone = TextRequest("a dog", "a1111")
    assert torch.allclose(encoded[requests[0]].hidden[77:], encoder.encode([alone])[alone].hidden)


@pytest.mark.parametrize("family", ["sd", "xl"])
def test_long_a1111_prompts_are_not_truncated(engines, family):
    engine = engines[family]
    rows = [RowInput(words(120, {100: "x"}), seed=3, negative_prompt="blurry", prompt_syntax=syntax)
            for syntax in ("a1111", "plain")]
    changed = [replace(r, prompt=words(120, {100: "z"})) for r in rows]
    before = engine.generate(SETTINGS, rows).images
    after = engine.generate(SETTINGS, changed).images
    assert np.abs(before[0].astype(int) - after[0].astype(int)).max() > 0  # a1111 reads token 100
    assert np.array_equal(before[1], after[1])  # plain truncates it away, as stock does
    assert text_facts(rows[1], engine.model).tokens == 120 and text_facts(rows[1], engine.model).truncated
    assert not text_facts(rows[0], engine.model).truncated
    assert not text_facts(replace(rows[1], prompt="a short one"), engine.model).truncated


# -- clip skip -----------------------------------------------------------------------------------
def test_clip_skip_equals_stock_sd(engines, stock):
    """Stock 0.42.1's SD clip_skip path reads ``text_encoder.text_model``, which transformers 5's
    CLIPTextModel no longer has; the reference computes stock's prompt_embeds as it would (the
    hidden states clip_skip + 1 from the end, through the final layer norm) and passes them in."""
    pipe = stock["sd"]
    row = RowInput("a red fox in the snow", seed=11, negative_prompt="blurry", clip_skip=1)
    ids = pipe.tokenizer(row.prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        out = pipe.text_encoder(ids, output_hidden_states=True)
        norm = getattr(pipe.text_encoder, "text_model", pipe.text_encoder).final_layer_norm
        embeds = norm(out.hidden_states[-(row.clip_skip + 1)])
    image = engines["sd"].generate(SETTINGS, [row]).images[0]
    assert_close(image, stock_image(pipe, "sd", row, prompt_embeds=embeds, negative_prompt=row.negative_prompt))
    assert np.abs(image.astype(int) - engines["sd"].generate(SETTINGS, [replace(row, clip_skip=None)]).images[0]).max() > 0


def test_clip_skip_equals_stock_sdxl(engines, stock):
    row = RowInput("a red fox in the snow", seed=12, negative_prompt="blurry", prompt_2="oil painting", clip_skip=1)
    image = engines["xl"].generate(SETTINGS, [row]).images[0]
    assert_close(image, stock_image(stock["xl"], "xl", row, clip_skip=1))


def test_clip_skip_past_the_encoders_layers_is_refused(engines):
    with pytest.raises(ModeError, match="clip_skip"):
        engines["xl"].generate(SETTINGS, [RowInput("a cat", seed=1, clip_skip=5)])
    with pytest.raises(ModeError, match="compel"):
        engines["sd"].generate(SETTINGS, [RowInput("a cat", seed=1, clip_skip=1, prompt_syntax="compel")])


# -- compel --------------------------------------------------------------------------------------
COMPEL_ROWS = [
    RowInput("a (red)1.4 fox in the snow--", seed=21, negative_prompt="blurry, (ugly)1.2"),
    RowInput(words(100), seed=22, negative_prompt="low quality"),  # two chunks, the negative padded
]


@pytest.mark.parametrize("family", ["sd", "xl"])
def test_compel_rows_equal_stock_with_compels_embeddings(engines, stock, family):
    from compel import CompelForSD, CompelForSDXL

    pipe = stock[family]
    rows = [replace(r, prompt_syntax="compel") for r in COMPEL_ROWS]
    if family == "xl":  # the second encoder's text two chunks long, the first's one: padded to match
        rows.append(RowInput("a fox", seed=23, negative_prompt="ugly", prompt_2=words(100), prompt_syntax="compel"))
    images = engines[family].generate(SETTINGS, rows).images
    for row, image in zip(rows, images):
        if family == "sd":
            out = CompelForSD(pipe)(row.prompt, negative_prompt=row.negative_prompt)
            extra = {}
        else:
            out = CompelForSDXL(pipe)(row.prompt, style_prompt=row.prompt_2, negative_prompt=row.negative_prompt)
            extra = dict(pooled_prompt_embeds=out.pooled_embeds, negative_pooled_prompt_embeds=out.negative_pooled_embeds)
        reference = stock_image(pipe, family, row, prompt_embeds=out.embeds, negative_prompt_embeds=out.negative_embeds,
                                **extra)
        assert_close(image, reference)


# -- rows of different lengths in one batch --------------------------------------------------------
def mixed_rows() -> list[RowInput]:
    """Plain, a1111 of one to three chunks, compel and clip-skip rows, guided and not."""
    return [
        RowInput("a red fox in the snow", seed=31, negative_prompt="blurry"),
        RowInput(words(160), seed=32, negative_prompt="(blurry:1.3)", prompt_syntax="a1111"),
        RowInput("a (tall:1.2) tower BREAK at night", seed=33, guidance_scale=1.0, prompt_syntax="a1111"),
        RowInput(words(100), seed=34, negative_prompt="ugly", prompt_syntax="compel"),
        RowInput("a quiet lake", seed=35, negative_prompt="", clip_skip=1),
        RowInput("a [small] boat", seed=36, negative_prompt=words(90), prompt_syntax="a1111", clip_skip=1),
    ]


@pytest.mark.parametrize("family", ["sd", "xl"])
def test_rows_of_different_lengths_are_batch_invariant(engines, family):
    engine = engines[family]
    rows = mixed_rows()
    batch = engine.generate(SETTINGS, rows).images
    for k, row in enumerate(rows):
        assert_close(engine.generate(SETTINGS, [row]).images[0], batch[k])
    moved = engine.generate(SETTINGS, [rows[4], rows[1], rows[0]]).images
    for image, k in zip(moved, (4, 1, 0)):
        assert_close(image, batch[k])
