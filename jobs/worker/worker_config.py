"""How a worker runs shards (device, precision, batching, speed switches, output format, S3
access): the same for every worker of a job, chosen by the run's options. Kept apart from the
worker so the driver can build it without loading a model."""

from __future__ import annotations

from dataclasses import dataclass, field

from sdbatch.jobs import defaults
from sdbatch.jobs.store.layouts import OutputSpec
from sdbatch.manifests.remote import S3Options
from sdbatch.pipeline.speed.options import SpeedOptions

from .image_cells import DEFAULT_MAX_IMAGE_BYTES, CellAccess


@dataclass(frozen=True)
class WorkerConfig:
    device: str = "auto"
    dtype: str | None = None
    batch_size: int = defaults.BATCH_SIZE
    encode_threads: int = 4
    output: OutputSpec = field(default_factory=OutputSpec)
    s3: S3Options = field(default_factory=S3Options)  # for s3:// image cells and outputs
    refiner: str | None = None  # the SDXL model that takes over rows with a refiner_start
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES  # --max-image-bytes: the largest image cell read
    # local folders image cells may name (the driver sets the manifest's folder and --allow-path
    # folders; None: anywhere, for trusted callers of the library)
    image_roots: tuple[str, ...] | None = None
    embeddings: tuple[str, ...] = ()  # --embedding PATH_OR_HUB_ID[:TOKEN], loaded into every model
    lora_dir: str | None = None  # where LoRA names are found (local or s3://)
    speed: SpeedOptions = field(default_factory=SpeedOptions.eager)  # --compile, --attention, ...

    def cell_access(self) -> CellAccess:
        return CellAccess(s3=self.s3, roots=self.image_roots, max_bytes=self.max_image_bytes)
