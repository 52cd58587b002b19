"""Moving tensors between host and GPU without making the host wait for the GPU.

A plain ``.cpu()`` or ``.to("cuda")`` from ordinary (pageable) memory waits until the GPU has
finished everything queued before it, so the host cannot queue the next batch's work meanwhile.
Copies here go through pinned host memory with ``non_blocking=True``; device-to-host copies run on a
side stream, so the next batch's kernels are not queued behind them, and an event says when the
images have arrived. On a CPU device everything is already on the host and nothing waits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

_copy_streams: dict[torch.device, torch.cuda.Stream] = {}


@dataclass
class PendingImages:
    """uint8 images (N, H, W, 3) on their way to host memory; ``result()`` waits for them."""

    host: torch.Tensor
    event: torch.cuda.Event | None = None

    def done(self) -> bool:
        return self.event is None or self.event.query()

    def result(self) -> np.ndarray:
        if self.event is not None:
            self.event.synchronize()
        return self.host.numpy()


def _copy_stream(device: torch.device) -> torch.cuda.Stream:
    if device not in _copy_streams:
        _copy_streams[device] = torch.cuda.Stream(device)
    return _copy_streams[device]


def to_host(images: torch.Tensor) -> PendingImages:
    """Start copying ``images`` into pinned host memory; returns at once."""
    if images.device.type != "cuda":
        return PendingImages(images.cpu())
    device = images.device
    stream = _copy_stream(device)
    host = torch.empty(images.shape, dtype=images.dtype, pin_memory=True)
    stream.wait_stream(torch.cuda.current_stream(device))  # the copy starts when the decode is done
    with torch.cuda.stream(stream):
        host.copy_(images, non_blocking=True)
        event = torch.cuda.Event()
        event.record(stream)
    images.record_stream(stream)  # the allocator keeps the device images until the copy is done
    return PendingImages(host, event)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` (on the host) on ``device``, without waiting for the GPU's queued work."""
    device = torch.device(device)
    if device.type != "cuda" or tensor.device == device:
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
