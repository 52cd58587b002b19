"""Scheduler names users write in manifests, mapped to diffusers scheduler classes.

Each scheduler is built ``from_config`` of the model's own scheduler config, as diffusers users
do, so beta schedule, prediction type and timestep spacing follow the model.
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


class UnknownSchedulerError(ValueError):
    pass


def make_scheduler(name: str | None, model_scheduler):
    """A fresh scheduler for one batch: ``name`` from SCHEDULERS, or None for the model's own."""
    if name is None:
        return type(model_scheduler).from_config(model_scheduler.config)
    try:
        choice = SCHEDULERS[name]
    except KeyError:
        raise UnknownSchedulerError(
            f"unknown scheduler {name!r}; known: {', '.join(SCHEDULER_NAMES)}"
        ) from None
    import diffusers  # here, not at import: the names above are read by `validate`, which loads no model

    cls = getattr(diffusers, choice.class_name)
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
