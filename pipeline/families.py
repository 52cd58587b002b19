"""Which per-row inputs a model family can use, so a row never silently loses one.

A model's family is read from its UNet config (``LoadedModel.family``). SD 1.x and 2.x condition on
one text encoder; SDXL adds a second text encoder and size/crop micro-conditioning, and refiner-
style SDXL models (``requires_aesthetics_score``) take an aesthetic score instead of the target
size and, with one text encoder, no second prompt (stock diffusers ignores it there).
"""

from __future__ import annotations

from .batch import RowInput
from .conditioning import check_text
from .loading import LoadedModel
from .modes import ModeError

# RowInput fields only some models use; None means "not given".
SECOND_PROMPTS = ("prompt_2", "negative_prompt_2")
SIZE_CONDITIONING = ("original_width", "original_height", "crop_top", "crop_left")
TARGET_SIZE = ("target_width", "target_height")
AESTHETIC_SCORES = ("aesthetic_score", "negative_aesthetic_score")
MODEL_SPECIFIC_FIELDS = SECOND_PROMPTS + SIZE_CONDITIONING + TARGET_SIZE + AESTHETIC_SCORES


def fields_used(model: LoadedModel) -> frozenset[str]:
    """The model-specific RowInput fields ``model`` reads."""
    if model.family != "sdxl":
        return frozenset()
    used = set(SIZE_CONDITIONING)
    used.update(AESTHETIC_SCORES if model.requires_aesthetics_score else TARGET_SIZE)
    if model.text_encoder_count == 2:
        used.update(SECOND_PROMPTS)
    return frozenset(used)


def _describe(model: LoadedModel) -> str:
    if model.family != "sdxl":
        return f"model {model.name} is an SD 1.x/2.x model"
    if model.requires_aesthetics_score:
        return f"model {model.name} is an SDXL refiner-style model (aesthetic score, one text encoder)"
    return f"model {model.name} is an SDXL model"


def check_row_fields(row: RowInput, *models: LoadedModel) -> None:
    """Raise ModeError naming the first model-specific field ``row`` gives that none of ``models``
    (the batch's model, plus its refiner for refined rows) uses, or the first text setting one of
    them cannot encode (``conditioning.check_text``)."""
    used = frozenset().union(*(fields_used(m) for m in models))
    for name in MODEL_SPECIFIC_FIELDS:
        if getattr(row, name) is not None and name not in used:
            users = {
                **{f: "SDXL models with two text encoders" for f in SECOND_PROMPTS},
                **{f: "SDXL models" for f in SIZE_CONDITIONING},
                **{f: "SDXL models without aesthetic score" for f in TARGET_SIZE},
                **{f: "SDXL refiner-style models (requires_aesthetics_score)" for f in AESTHETIC_SCORES},
            }[name]
            raise ModeError(name, f"given, but {' and '.join(_describe(m) for m in models)}; "
                                  f"{name} is used only by {users}")
    for model in models:
        check_text(row, model)
