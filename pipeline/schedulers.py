"""Scheduler names users write in manifests, mapped to diffusers scheduler classes.

Each scheduler is built ``from_config`` of the model's own scheduler config, as diffusers users
do, so beta schedule, prediction type (``v_prediction`` for SD 2.x 768-v models), timestep spacing
(``trailing``) and ``rescale_betas_zero_snr`` follow the model: the name picks the algorithm, the
model keeps its settings. A scheduler class that cannot take one of these settings would drop it
silently (``from_config`` ignores keys a class does not know); such a pairing is refused instead
(``check_scheduler``): in diffusers 0.42 pndm, lms and heun have no ``rescale_betas_zero_snr``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SchedulerChoice:
    """A diffusers scheduler class plus the config overrides that make the named variant."""

    class_name: str
    overrides: dict[str, Any] = field(default_factory=dict)


SCHEDULERS: dict[str, SchedulerChoice] = {
    "ddim": SchedulerChoice("DDIMScheduler"),
    "pndm": SchedulerChoice("PNDMScheduler"),
    "lms": SchedulerChoice("LMSDiscreteScheduler"),
    "euler": SchedulerChoice("EulerDiscreteScheduler"),
    "euler_a": SchedulerChoice("EulerAncestralDiscreteScheduler"),
    "heun": SchedulerChoice("HeunDiscreteScheduler"),
    "dpmpp_2m": SchedulerChoice("DPMSolverMultistepScheduler"),
    "dpmpp_2m_karras": SchedulerChoice("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "unipc": SchedulerChoice("UniPCMultistepScheduler"),
}

SCHEDULER_NAMES = tuple(SCHEDULERS)


# Model scheduler settings that change what the model's UNet output means or where the schedule
# runs; they must survive the switch to a named scheduler. Value: the setting's "off" value.
MODEL_SETTINGS: dict[str, Any] = {
    "prediction_type": "epsilon",
    "timestep_spacing": None,
    "rescale_betas_zero_snr": False,
}


class UnknownSchedulerError(ValueError):
    pass


class SchedulerSettingError(ValueError):
    """A named scheduler that cannot keep a setting of the model's scheduler config."""

    column = "scheduler"


def _scheduler_class(name: str):
    try:
        choice = SCHEDULERS[name]
    except KeyError:
        raise UnknownSchedulerError(
            f"unknown scheduler {name!r}; known: {', '.join(SCHEDULER_NAMES)}"
        ) from None
    import diffusers  # here, not at import: the names above are read by `validate`, which loads no model

    return getattr(diffusers, choice.class_name), choice


def _accepts(cls, key: str) -> bool:
    return key in inspect.signature(cls.__init__).parameters


def check_scheduler(name: str | None, model_scheduler) -> None:
    """Raise SchedulerSettingError when scheduler ``name`` would drop a setting the model's
    scheduler config sets (UnknownSchedulerError for an unknown name)."""
    if name is None:
        return
    cls, _ = _scheduler_class(name)
    config = model_scheduler.config
    for key, off in MODEL_SETTINGS.items():
        value = config.get(key, off)
        if value != off and not _accepts(cls, key):
            able = [n for n in SCHEDULER_NAMES if _accepts(_scheduler_class(n)[0], key)]
            raise SchedulerSettingError(
                f"scheduler {name} ({cls.__name__}) cannot keep this model's {key}={value!r}; "
                f"schedulers that can: {', '.join(able)}")


def make_scheduler(name: str | None, model_scheduler):
    """A fresh scheduler for one batch: ``name`` from SCHEDULERS, or None for the model's own."""
    if name is None:
        return type(model_scheduler).from_config(model_scheduler.config)
    check_scheduler(name, model_scheduler)
    cls, choice = _scheduler_class(name)
    return cls.from_config(model_scheduler.config, **choice.overrides)


def scheduler_name(scheduler) -> str:
    """The sdbatch name of a scheduler object (its class name when none of ours matches)."""
    cls = type(scheduler).__name__
    karras = bool(getattr(scheduler.config, "use_karras_sigmas", False))
    for name, choice in SCHEDULERS.items():
        if choice.class_name == cls and bool(choice.overrides.get("use_karras_sigmas", False)) == karras:
            return name
    return cls


def step_kwargs(scheduler, generators) -> dict[str, Any]:
    """Extra ``step`` arguments, as stock pipelines pass them: per-row generators and eta=0."""
    params = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "eta" in params:
        kwargs["eta"] = 0.0
    if "generator" in params:
        kwargs["generator"] = generators
    return kwargs
