"""The speed switches as a user writes them (``SpeedOptions``), what they resolve to on a device
(``ResolvedSpeed``), and the error that refuses them. No torch at import: the driver builds these
from the command line; ``acceleration.py`` applies them to a loaded model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from sdbatch.pipeline.loading import LoadedModel

COMPILE_CHOICES = ("off", "on", "auto")
ATTENTION_CHOICES = ("auto", "flash", "efficient", "cudnn", "math")
CUDA_GRAPHS_CHOICES = ("off", "on", "auto")
QUANTIZE_CHOICES = ("none", "fp8")

# cuda_graphs=auto turns them on up to this many rows per batch: launch overhead is a large share
# of a UNet call only when the call is short. Not measured on a GPU yet: a first guess.
CUDA_GRAPHS_AUTO_MAX_BATCH = 8

class SpeedOptionError(ValueError):
    """A speed switch with a bad value, or one this device or model cannot run; ``option`` names
    the switch (the CLI's ``--OPTION`` with underscores as dashes)."""

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option


def _choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SpeedOptionError(option, f"{option}: unknown value {value!r}; choose one of {', '.join(choices)}")


@dataclass(frozen=True)
class SpeedOptions:
    """The speed switches as a user writes them. Defaults are what the CLI offers by default;
    ``SpeedOptions.eager()`` is everything off (the engine's default, and stock's behaviour)."""

    compile: str = "auto"  # off | on | auto (on for CUDA)
    attention: str = "auto"  # auto | flash | efficient | cudnn | math
    cuda_graphs: str = "auto"  # off | on | auto (on for CUDA, compile on, small batches)
    quantize: str = "none"  # none | fp8 (lossy)

    def __post_init__(self):
        _choice("compile", self.compile, COMPILE_CHOICES)
        _choice("attention", self.attention, ATTENTION_CHOICES)
        _choice("cuda_graphs", self.cuda_graphs, CUDA_GRAPHS_CHOICES)
        _choice("quantize", self.quantize, QUANTIZE_CHOICES)
        if self.cuda_graphs == "on" and self.compile == "off":
            raise SpeedOptionError("cuda_graphs", "cuda_graphs=on needs compile on or auto: "
                                                  "sdbatch captures CUDA graphs through torch.compile")

    @classmethod
    def eager(cls) -> SpeedOptions:
        return cls(compile="off", attention="auto", cuda_graphs="off", quantize="none")

    @property
    def lossy(self) -> bool:
        """Whether images differ from eager by more than rounding (callers record it)."""
        return self.quantize != "none"

    def image_affecting(self) -> dict[str, str]:
        """The switches that change images, for metadata and the job fingerprint (the others keep
        every pixel within 1 uint8, so a resumed job may change them)."""
        return {"quantize": self.quantize} if self.lossy else {}

    def resolve(self, device: torch.device | str, dtype: torch.dtype | None = None,
                batch_size: int | None = None, model: LoadedModel | None = None) -> ResolvedSpeed:
        """What runs on ``device``: ``auto`` decided, and whatever cannot run there refused with the
        reason. ``model``, when given, lets the attention check use the UNet's real head sizes.
        ``dtype``: the model's (default fp16)."""
        import torch

        from .device_checks import attention_unavailable_reason, fp8_unavailable_reason, head_dims

        device = torch.device(device)
        dtype = torch.float16 if dtype is None else dtype
        cuda = device.type == "cuda"
        compile_on = self.compile == "on" or (self.compile == "auto" and cuda)
        if self.cuda_graphs == "on" and not cuda:
            raise SpeedOptionError("cuda_graphs", f"cuda_graphs=on needs a CUDA device; this run uses {device}")
        if self.cuda_graphs == "on" and not compile_on:
            raise SpeedOptionError("cuda_graphs", "cuda_graphs=on needs compile on (compile=auto is off on "
                                                  f"{device})")
        small = batch_size is not None and batch_size <= CUDA_GRAPHS_AUTO_MAX_BATCH
        graphs = self.cuda_graphs == "on" or (self.cuda_graphs == "auto" and cuda and compile_on and small)
        attention = None if self.attention == "auto" else self.attention
        if attention is not None:
            reason = attention_unavailable_reason(attention, device, dtype, head_dims(model))
            if reason:
                raise SpeedOptionError("attention", reason)
        if self.quantize == "fp8":
            reason = fp8_unavailable_reason(device, dtype)
            if reason:
                raise SpeedOptionError("quantize", reason)
        return ResolvedSpeed(compile=compile_on, attention=attention, cuda_graphs=graphs,
                             quantize=None if self.quantize == "none" else self.quantize)


@dataclass(frozen=True)
class ResolvedSpeed:
    """What one model actually runs with; ``describe()`` is what summaries and logs show."""

    compile: bool = False
    attention: str | None = None  # None: PyTorch's choice
    cuda_graphs: bool = False
    quantize: str | None = None

    @property
    def eager(self) -> bool:
        return self == ResolvedSpeed()

    def describe(self) -> dict[str, Any]:
        return {"compile": self.compile, "attention": self.attention or "auto",
                "cuda_graphs": self.cuda_graphs, "quantize": self.quantize or "none"}


def lora_conflict(quantize: str) -> str:
    """Why rows with LoRAs cannot run with this ``--quantize`` (fp8: adapters attach to
    full-precision linear layers only). Compile is no conflict: batches with LoRAs run eagerly."""
    return (f"rows with LoRAs cannot run with quantize {quantize} (peft's adapter layers do not attach "
            "to quantized layers); run LoRA rows with --quantize none")
