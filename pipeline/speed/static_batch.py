"""Fixed shapes for compiled modules: pad the batch dimension, run, throw the padding away.

A compiled module is specialised to its input shapes; a new batch size means a new compile (about
1.5 minutes for an SD UNet on a GPU). Batches differ in size twice over: the last batch of a job is
short, and the UNet sees ``uncond of the guided rows + cond of every row`` samples, which depends on
how many rows have guidance > 1. So every compiled call is padded on the batch dimension to one of
a few sizes: for the UNet, one sample per row of the job's batch size (batches whose rows are all
unguided, as with distilled few-step models) or two (any guided row). A size already compiled is
preferred to a smaller one not yet compiled, so a job compiles once, or twice at most.

Padding happens at the module's boundary, not by adding rows: padding samples are copies of the
call's last sample, they draw from no generator, no scheduler or text encoder sees them, and their
outputs are sliced off before anyone reads them. Nothing in a UNet or VAE mixes samples of a batch
(group norm, attention and convolutions are per sample), so real rows' outputs do not depend on
them; tests/test_speed.py checks that a padded row's image equals the unpadded one.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.utils._pytree import tree_leaves, tree_map

log = logging.getLogger(__name__)


@dataclass
class SpeedStats:
    """Compile time per module (first calls at each new input shape, which trace and compile, or
    load from the on-disk cache), and how many samples were computed only as padding."""

    compile_seconds: dict[str, float] = field(default_factory=dict)
    compiled_shapes: dict[str, int] = field(default_factory=dict)
    padded_samples: dict[str, int] = field(default_factory=dict)

    def record_compile(self, name: str, seconds: float) -> None:
        self.compile_seconds[name] = self.compile_seconds.get(name, 0.0) + seconds
        self.compiled_shapes[name] = self.compiled_shapes.get(name, 0) + 1

    @property
    def total_compile_seconds(self) -> float:
        return sum(self.compile_seconds.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "compile_seconds": round(self.total_compile_seconds, 3),
            "compile_seconds_by_module": {k: round(v, 3) for k, v in self.compile_seconds.items()},
            "compiled_shapes": dict(self.compiled_shapes),
            "padded_samples": dict(self.padded_samples),
        }


def _pad_rows(x: Any, n: int, extra: int) -> Any:
    if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == n:
        return torch.cat([x, x[-1:].expand(extra, *x.shape[1:])])
    return x


def _signature(args: tuple, kwargs: dict) -> tuple:
    return tuple((tuple(leaf.shape), leaf.dtype, leaf.device) if isinstance(leaf, torch.Tensor) else repr(leaf)
                 for leaf in tree_leaves((args, kwargs)))


class StaticBatchRunner:
    """Calls ``fn`` (a module or function whose first argument is batched) with every tensor whose
    first dimension is the batch padded to a static size; returns outputs for the real rows only.

    ``sizes``: the sizes calls are padded to (the smallest already used that fits, else the smallest
    that fits; a call larger than all of them becomes a size of its own).
    ``pad``: off for eager modules, which gain nothing from fixed shapes. ``compiled``: time the
    first call at each input signature as compile time. ``cuda_graphs``: mark a new graph step
    before each call and copy the outputs out of the graph's memory, which its next replay reuses
    (schedulers keep earlier predictions). ``context``: entered around each call (the SDPA backend).
    """

    def __init__(self, fn: Callable[..., Any], *, name: str, device: torch.device, stats: SpeedStats,
                 pad: bool = True, compiled: bool = True, cuda_graphs: bool = False,
                 context: Callable[[], Any] | None = None, sizes: tuple[int, ...] = ()):
        self.fn = fn
        self.name = name
        self.device = torch.device(device)
        self.stats = stats
        self.pad = pad
        self.compiled = compiled
        self.cuda_graphs = cuda_graphs
        self.context = context or nullcontext
        self.sizes: set[int] = set(sizes)
        self._used: set[int] = set()
        self._seen: set[tuple] = set()

    def reserve(self, *sizes: int) -> None:
        """Calls of up to ``max(sizes)`` samples are coming: pad to these sizes."""
        self.sizes.update(sizes)

    def forget_shapes(self) -> None:
        """The module changed (LoRA layers added): time each shape's next call as a compile again,
        since that call traces the module anew."""
        self._seen.clear()

    def padded_size(self, n: int) -> int:
        fits = [s for s in self._used if s >= n] or [s for s in self.sizes if s >= n]
        size = min(fits) if fits else n
        if not fits and self.sizes:
            log.info("%s: a call of %d samples is larger than every static size %s (one more compile)",
                     self.name, n, sorted(self.sizes))
        self._used.add(size)
        return size

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        n = sample.shape[0]
        extra = 0
        if self.pad:
            extra = self.padded_size(n) - n
        if extra:
            sample, args, kwargs = tree_map(lambda x: _pad_rows(x, n, extra), (sample, args, kwargs))
            self.stats.padded_samples[self.name] = self.stats.padded_samples.get(self.name, 0) + extra
        first = False
        if self.compiled:
            key = _signature((sample, *args), kwargs)
            first = key not in self._seen
            if first:
                self._seen.add(key)
                self._sync()  # time the compile, not the work queued before it
                started = time.perf_counter()
        with self.context():
            if self.cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            out = self.fn(sample, *args, **kwargs)
        if first:
            self._sync()
            seconds = time.perf_counter() - started
            self.stats.record_compile(self.name, seconds)
            log.info("%s: compiled for %s in %.1f s", self.name, tuple(sample.shape), seconds)
        if extra or self.cuda_graphs:
            size = sample.shape[0]

            def keep(x: Any) -> Any:
                if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == size:
                    x = x[:n]
                    return x.clone() if self.cuda_graphs else x
                return x

            out = tree_map(keep, out)
        return out
