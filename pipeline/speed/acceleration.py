"""Speed switches for one loaded model: what the user asks for, what it resolves to on a device, and
applying it once.

``SpeedOptions`` holds the user's words (``compile``, ``attention``, ``cuda_graphs``, ``quantize``);
``SpeedOptions.resolve`` turns them into a ``ResolvedSpeed`` for a device and batch size, refusing
what cannot run there with a ``SpeedOptionError`` that names the option (a ``ValueError``: the CLI
turns it into exit 2 before any work starts); ``accelerate`` applies it to a ``LoadedModel`` and
returns the callables the engine runs the UNet and the VAE decoder through.

What each switch does, and why it is built this way:

* ``compile``: ``torch.compile`` (inductor) of the UNet and of the VAE decode (latents to uint8
  pixels, so the rounding and layout change fuse into the decoder's last kernels), with
  channels_last and diffusers' fused QKV projections (measured: channels_last alone slows eager, so
  both come only with compile), static shapes (``static_batch.py``: one compile serves a whole job)
  and the inductor settings diffusers recommends for SD UNets (``INDUCTOR_OPTIONS``). Compiled
  artefacts go to the sdbatch cache folder, so a second run, a restarted actor or a second actor on
  the node reuses them. ``auto``: on for CUDA, off elsewhere. Batches with LoRAs run the same UNet
  eagerly with its unfused projections (``QKVProjections``), the rest compiled: a job mixing them
  keeps the compiled path for its plain rows. (diffusers' LoRA hotswap would compile LoRA batches
  too, but needs every adapter's rank and targets known before the first compile.)
* ``attention``: which PyTorch SDPA kernel the UNet's attention uses (``sdpa_kernel``); ``auto``
  leaves PyTorch's own choice. A backend this device cannot run for this model is refused up front.
* ``cuda_graphs``: CUDA graphs through inductor (``triton.cudagraphs``); they remove per-kernel
  launch cost, which matters when a UNet call is short (small batches). Need compile and CUDA.
  ``auto``: on for batches up to ``CUDA_GRAPHS_AUTO_MAX_BATCH`` (a guess, not yet measured on GPU).
* ``quantize``: ``fp8`` quantizes the UNet's linear layers with torchao's float8 dynamic
  activation + weight scheme. Lossy: images change, so callers must record it in metadata and in
  the job fingerprint (``SpeedOptions.image_affecting``). Needs a CUDA GPU of compute capability
  >= 8.9 (Ada, Hopper) and the ``torchao`` package; refused elsewhere with the reason.

Everything but ``quantize`` keeps a row's image within 1 uint8 of eager (tests/test_speed.py).
"""

from __future__ import annotations

import logging
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from sdbatch.pipeline.cache import cache_dir
from sdbatch.pipeline.loading import LoadedModel

from .device_checks import sdpa_backend_context
from .options import ResolvedSpeed, SpeedOptionError, SpeedOptions, lora_conflict
from .static_batch import SpeedStats, StaticBatchRunner

log = logging.getLogger(__name__)

# What diffusers' SD/SDXL speed guide sets before compiling a UNet (all real inductor options in
# torch 2.13; coordinate descent tunes Triton kernels only, so it is a no-op on CPU).
INDUCTOR_OPTIONS: dict[str, Any] = {
    "conv_1x1_as_mm": True,
    "coordinate_descent_tuning": True,
    "coordinate_descent_check_all_directions": True,
    "epilogue_fusion": False,
}

RECOMPILE_LIMIT = 64  # compiled graphs per function (dynamo's default is 8)

# -- the compile cache -------------------------------------------------------------------------------
def use_compile_cache(root: Path | None = None) -> Path:
    """Point inductor's on-disk caches (FX graphs, AOT autograd, autotuning, Triton kernels, all
    under ``TORCHINDUCTOR_CACHE_DIR``) at the sdbatch cache folder, unless the user pointed them
    elsewhere; returns inductor's folder. Must run before compiling. Inductor writes its own
    default into the variable the first time it looks, so that default counts as unset."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    root = root or cache_dir()
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root / "torchinductor")
        if current is not None:  # inductor may hold paths under the old folder in memory
            from torch._inductor.utils import clear_caches

            clear_caches()
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


# -- applying ---------------------------------------------------------------------------------------------
def _fp8_quantize(unet: torch.nn.Module, dtype: torch.dtype) -> int:
    """Quantize the UNet's linear layers to float8 (torchao); returns how many it quantized.
    Per-row scales need bf16 weights (torchao), so fp16 models get per-tensor scales."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, PerTensor, quantize_

    granularity = PerRow() if dtype == torch.bfloat16 else PerTensor()
    quantize_(unet, Float8DynamicActivationFloat8WeightConfig(granularity=granularity, set_inductor_config=False))
    # torchao leaves layers whose sizes fp8 matmuls cannot take (not multiples of 16) as they were
    return sum(isinstance(m, torch.nn.Linear) and type(m.weight.data) is not torch.Tensor for m in unet.modules())


def _fuse_qkv(module: torch.nn.Module, name: str) -> bool:
    try:
        module.fuse_qkv_projections()
        return True
    except (ValueError, AttributeError) as exc:  # added-KV attention, or a model without the method
        log.info("%s: QKV projections not fused (%s)", name, exc)
        return False


class QKVProjections:
    """Which attention processors a UNet with fused QKV projections runs: the fused ones (plain
    batches, through the compiled UNet) or its own separate ones (batches with LoRAs: peft's adapter
    layers sit on ``to_q``/``to_k``/``to_v``, which the fused processor bypasses). Both weight sets
    stay loaded (diffusers' ``fuse_qkv_projections`` keeps the separate ones), so a switch only
    swaps processor objects, the same objects each time: the compiled graph's guards still hold."""

    def __init__(self, unet: torch.nn.Module):
        self.unet = unet
        self.fused_processors = dict(unet.attn_processors)
        self.separate_processors = dict(unet.original_attn_processors)
        self.fused = True

    def use(self, fused: bool) -> None:
        if fused != self.fused:
            # set_attn_processor empties the dict it is given: hand it a copy
            self.unet.set_attn_processor(dict(self.fused_processors if fused else self.separate_processors))
            self.fused = fused


@dataclass
class Accelerated:
    """A model with its speed switches applied: the engine calls ``unet_for(...)`` in place of
    ``pipe.unet`` and ``decode`` for latents -> images; ``stats`` has the compile times.

    Batches with LoRAs run the UNet eagerly (``adapter_unet``, with its separate QKV projections,
    where adapters attach); the rest run it compiled. One compiled graph serves plain batches
    whatever adapters are loaded: peft's disabled adapter layers call their base layer alone."""

    resolved: ResolvedSpeed
    unet: Callable[..., Any]
    decode: Any  # decoding.Decoder
    stats: SpeedStats
    applied: dict[str, Any] = field(default_factory=dict)
    rows: int = 0  # the most rows per batch the static sizes were made for
    adapter_unet: Callable[..., Any] | None = None  # for batches with LoRAs (default: ``unet``)
    projections: QKVProjections | None = None  # fused QKV, switched off for batches with LoRAs

    def unet_for(self, adapters: bool) -> Callable[..., Any]:
        """What runs the UNet for a batch with (``adapters``) or without active LoRAs."""
        if self.projections is not None:
            self.projections.use(fused=not adapters)
        return self.adapter_unet if adapters and self.adapter_unet is not None else self.unet

    def adapters_changed(self) -> None:
        """LoRA layers were added to or removed from the UNet: the compiled graph is traced again at
        its next call, which is timed as compile time."""
        if hasattr(self.unet, "forget_shapes"):
            self.unet.forget_shapes()

    def reserve(self, rows: int) -> None:
        """Batches of up to ``rows`` rows are coming: size the static shapes for them (a batch
        larger than any before compiles once more; smaller ones are padded)."""
        if rows <= self.rows:
            return
        self.rows = rows
        if hasattr(self.unet, "reserve"):
            self.unet.reserve(rows, 2 * rows)  # one UNet sample per unguided row, two per guided one
        self.decode.reserve(rows)

    def check_loras(self, loras: tuple) -> None:
        """Refuse a batch with LoRAs on an fp8 UNet: peft's adapter layers do not attach to
        torchao's quantized ones (the driver refuses such jobs before they start)."""
        if loras and self.resolved.quantize:
            raise SpeedOptionError("quantize", lora_conflict(self.resolved.quantize))

    def report(self) -> dict[str, Any]:
        """What summaries show for this model: the switches as run, what was applied, compile time."""
        return {**self.resolved.describe(), **self.applied, **self.stats.as_dict()}


_APPLIED: "weakref.WeakKeyDictionary[torch.nn.Module, Accelerated]" = weakref.WeakKeyDictionary()


def accelerate(model: LoadedModel, options: SpeedOptions | None = None, *, batch_size: int | None = None,
               vae_batch: int = 8, inductor_options: dict[str, Any] | None = None) -> Accelerated:
    """Apply ``options`` to ``model`` once (in place: channels_last, fused QKV, fp8 change its
    modules) and return what the engine runs. Applying it again with the same resolution returns
    the same object; with a different one it is refused, since fusing and quantizing are not undone.

    ``batch_size``: the job's rows per batch, the size every compiled call is padded to (when not
    given, the largest batch seen so far). ``inductor_options`` replaces ``INDUCTOR_OPTIONS``
    (the benchmark compares them with inductor's defaults)."""
    from sdbatch.pipeline.decoding import Decoder

    options = options or SpeedOptions.eager()
    resolved = options.resolve(model.device, model.dtype, batch_size, model)
    unet, vae = model.pipe.unet, model.pipe.vae
    done = _APPLIED.get(unet)
    if done is not None:
        if done.resolved != resolved:
            raise SpeedOptionError("compile", f"model {model.name} already runs with {done.resolved.describe()}; "
                                              f"cannot switch to {resolved.describe()} (load it again)")
        if batch_size:
            done.reserve(batch_size)
        return done

    stats = SpeedStats()
    applied: dict[str, Any] = {}
    if resolved.eager:
        acc = Accelerated(resolved, unet, Decoder(model, vae_batch, stats=stats), stats, applied)
        _APPLIED[unet] = acc
        return acc

    projections = None
    if resolved.compile:
        unet.to(memory_format=torch.channels_last)
        for part in (vae.post_quant_conv, vae.decoder):  # the encoder stays eager: left as it is
            if part is not None:
                part.to(memory_format=torch.channels_last)
        applied["fused_qkv"] = _fuse_qkv(unet, "unet") and _fuse_qkv(vae, "vae")
        if getattr(unet, "original_attn_processors", None):
            projections = QKVProjections(unet)
    if resolved.quantize == "fp8":
        applied["fp8_linear_layers"] = _fp8_quantize(unet, model.dtype)
    compiler: Callable[[Any, str], Any] | None = None
    if resolved.compile:
        cache = use_compile_cache()
        applied["compile_cache"] = str(cache)
        # one graph per (image size, timestep dtype, model): dynamo's default of 8 per function
        # would send a job with many sizes back to eager without a word
        import torch._dynamo.config as dynamo_config

        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
        opts = dict(INDUCTOR_OPTIONS if inductor_options is None else inductor_options)
        unet_opts = {**opts, "triton.cudagraphs": resolved.cuda_graphs}

        def compile_module(fn, which: str):
            # dynamic=False: one specialised graph per shape; static_batch keeps the shapes fixed.
            return torch.compile(fn, dynamic=False, options=unet_opts if which == "unet" else opts)

        compiler = compile_module

    context = (lambda: sdpa_backend_context(resolved.attention)) if resolved.attention else None
    runner = StaticBatchRunner(
        unet if compiler is None else compiler(unet, "unet"),
        name="unet", device=model.device, stats=stats,
        pad=resolved.compile, compiled=resolved.compile, cuda_graphs=resolved.cuda_graphs, context=context,
    )
    adapter_runner = None
    if resolved.compile:  # LoRA batches: the same modules, eager, at their own sizes
        adapter_runner = StaticBatchRunner(unet, name="unet_lora", device=model.device, stats=stats,
                                           pad=False, compiled=False, context=context)
    acc = Accelerated(resolved, runner, Decoder(model, vae_batch, stats=stats, compiler=compiler), stats, applied,
                      adapter_unet=adapter_runner, projections=projections)
    if batch_size:
        acc.reserve(batch_size)
    _APPLIED[unet] = acc
    log.info("model %s runs with %s", model.name, {**resolved.describe(), **applied})
    return acc
