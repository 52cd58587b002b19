"""What this device can run of the speed switches, asked before a job starts: each check returns the
reason a switch cannot run here (None when it can); ``SpeedOptions.resolve`` refuses with it."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from sdbatch.pipeline.loading import LoadedModel

FP8_MIN_CAPABILITY = (8, 9)

_SDPA_BACKENDS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
                  "cudnn": "CUDNN_ATTENTION", "math": "MATH"}


def sdpa_backend_context(attention: str | None) -> AbstractContextManager:
    """The context that restricts SDPA to one backend (a null context for PyTorch's choice)."""
    if attention is None:
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, _SDPA_BACKENDS[attention])])


def head_dims(model: LoadedModel | None) -> tuple[int, ...]:
    """The UNet's attention head sizes (SD 1.5: 40, 80, 160); SDXL-like 64 when unknown."""
    if model is None:
        return (64,)
    from diffusers.models.attention_processor import Attention

    dims = {m.inner_dim // m.heads for m in model.pipe.unet.modules() if isinstance(m, Attention)}
    return tuple(sorted(dims)) or (64,)


def attention_unavailable_reason(attention: str, device: torch.device, dtype: torch.dtype,
                                 head_dims: tuple[int, ...] = (64,)) -> str | None:
    """Run one small attention per head size under the backend: PyTorch's reason when it has no
    kernel for this device, dtype or head size, else None."""
    import warnings

    import torch.nn.functional as F

    if device.type != "cuda" and attention in ("efficient", "cudnn"):
        return f"attention={attention}: PyTorch has that kernel on CUDA only; on {device} choose flash, math or auto"
    for head_dim in head_dims:
        q = torch.randn(2, 2, 16, head_dim, device=device, dtype=dtype)
        kv = torch.randn(2, 2, 24, head_dim, device=device, dtype=dtype)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with sdpa_backend_context(attention), torch.inference_mode():
                    F.scaled_dot_product_attention(q, kv, kv)
            except RuntimeError as exc:
                why = "; ".join(str(w.message) for w in caught) or str(exc)
                return (f"attention={attention} cannot run on {device} with {str(dtype).removeprefix('torch.')} "
                        f"and head size {head_dim}: {why}")
    return None


def fp8_unavailable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why fp8 cannot run here, or None when it can."""
    if device.type != "cuda":
        return f"fp8 needs a CUDA GPU of compute capability >= 8.9 (Ada, Hopper); this run uses {device}"
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_MIN_CAPABILITY:
        return (f"fp8 needs compute capability >= 8.9 (Ada, Hopper); {torch.cuda.get_device_name(device)} "
                f"has {capability[0]}.{capability[1]}")
    if dtype not in (torch.float16, torch.bfloat16):
        return f"fp8 quantizes an fp16 or bf16 model; this one is {str(dtype).removeprefix('torch.')}"
    try:
        import torchao.quantization  # noqa: F401
    except ImportError:
        return "fp8 needs the torchao package (pip install torchao)"
    return None
