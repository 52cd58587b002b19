"""What a model is on disk or on the hub, before any weight is loaded (no torch here).

``locate_model`` finds a model's ``model_index.json`` (a local diffusers folder, a hub id resolved
to its commit, or a built-in tiny name), checks it names a Stable Diffusion pipeline whose weights
are safetensors, and gives the model a fingerprint for resume checks. The driver calls it before a
job is planned, so a model that cannot load is refused with its true cause (a missing file, no
network, no access) before any GPU works; the loader calls it too.

Fingerprints: a hub model by its resolved commit; a local folder by its configs' bytes and its
safetensors files' headers, sizes and a sample of their bytes (cached by path, size and
modification time, so gigabytes are read once, not at every start).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from .cache import cache_dir

log = logging.getLogger(__name__)

BUILTIN_PREFIX = "tiny"
# the built-in tiny models (pipeline/tiny.py builds them; named here so choosing one needs no torch)
TINY_VARIANTS = ("base", "inpaint", "depth", "v", "xl", "xl-inpaint", "xl-refiner")
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
# The diffusers pipeline classes sdbatch's engine runs (the Stable Diffusion family).
PIPELINE_CLASSES = (
    "StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline",
    "StableDiffusionDepth2ImgPipeline", "StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline",
    "StableDiffusionXLInpaintPipeline",
)
_SAMPLE_BYTES = 1 << 16  # bytes read at each of a few places of a weight file for its fingerprint
_SAMPLES = 8


class ModelLoadError(RuntimeError):
    """A model that cannot be used; the message names the model and the true cause, in one line."""


@dataclass(frozen=True)
class ModelLocation:
    name: str  # as the user wrote it
    kind: str  # "folder" | "hub" | "builtin"
    folder: Path | None  # the local folder holding model_index.json (None: builtin not yet written)
    revision: str | None  # hub: the resolved commit
    fingerprint: str
    pipeline_class: str

    @property
    def family(self) -> str:
        """"sdxl" or "sd" (SD 1.x/2.x), from the pipeline class (a built-in's from its name)."""
        if self.kind == "builtin":
            return "sdxl" if builtin_variant(self.name).startswith("xl") else "sd"
        return "sdxl" if self.pipeline_class.startswith("StableDiffusionXL") else "sd"


def is_builtin(name: str) -> bool:
    return name.partition(":")[0] == BUILTIN_PREFIX and not Path(name).exists()


def builtin_variant(name: str) -> str:
    return name.partition(":")[2] or "base"


def _read_index(path: Path, name: str) -> dict:
    try:
        index = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{name}: cannot read {path.name}: {exc}") from None
    if not isinstance(index, dict):
        raise ModelLoadError(f"{name}: {path.name} is not a JSON object")
    cls = index.get("_class_name")
    if cls not in PIPELINE_CLASSES:
        raise ModelLoadError(f"{name}: model_index.json names pipeline class {cls!r}; sdbatch runs Stable "
                             f"Diffusion pipelines ({', '.join(PIPELINE_CLASSES)})")
    return index


def components(index: dict) -> list[str]:
    """The component folders model_index.json lists (entries saved as null excluded)."""
    return [key for key, value in index.items()
            if not key.startswith("_") and isinstance(value, (list, tuple)) and len(value) == 2 and all(value)]


def _check_folder(folder: Path, name: str, index: dict) -> None:
    files = [p for p in folder.rglob("*") if p.is_file()]
    pickles = [p for p in files if p.suffix in PICKLE_SUFFIXES]
    if pickles and not any(p.suffix == ".safetensors" for p in files):
        raise ModelLoadError(
            f"{name}: only pickle checkpoints found ({', '.join(sorted(p.name for p in pickles)[:3])}); "
            "sdbatch loads safetensors weights only. Convert the folder with "
            "`pipe.save_pretrained(DIR, safe_serialization=True)`.")
    for part in components(index):
        if not (folder / part).is_dir():
            raise ModelLoadError(f"{name}: model_index.json lists component {part!r}, but there is no folder {part}/")


def _hub_cause(exc: BaseException) -> str:
    """The true cause of a hub failure, in words: network, access, or a missing file or revision."""
    from huggingface_hub import errors

    chain, seen = [], exc
    while seen is not None:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, errors.GatedRepoError):
        return "gated repository: accept its terms on huggingface.co and set HF_TOKEN"
    if isinstance(exc, errors.RepositoryNotFoundError):
        return "no such repository on the Hugging Face Hub, or it is private (set HF_TOKEN)"
    if isinstance(exc, errors.RevisionNotFoundError):
        return "no such revision"
    if isinstance(exc, errors.LocalEntryNotFoundError):
        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
            return "not in the local Hugging Face cache, and HF_HUB_OFFLINE is set"
        network = next((c for c in chain[1:] if isinstance(c, OSError) or "Connect" in type(c).__name__), None)
        detail = f" ({str(network).strip()})" if network is not None else ""
        return f"cannot reach the Hugging Face Hub{detail} and the model is not in the local cache"
    if isinstance(exc, errors.EntryNotFoundError):
        return "the repository has no model_index.json: not a diffusers pipeline"
    if isinstance(exc, errors.HfHubHTTPError):
        return f"Hugging Face Hub error: {str(exc).splitlines()[0]}"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _locate_hub(name: str, revision: str | None) -> ModelLocation:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HFValidationError

    try:
        index_file = Path(hf_hub_download(name, "model_index.json", revision=revision))
    except HFValidationError:
        raise ModelLoadError(f"{name}: no such folder, and not a hub id (org/name)") from None
    except Exception as exc:  # noqa: BLE001 - every hub failure becomes one line with its cause
        raise ModelLoadError(f"{name}: {_hub_cause(exc)}") from None
    commit = index_file.parent.name  # .../snapshots/<commit>/model_index.json
    index = _read_index(index_file, name)
    return ModelLocation(name, "hub", index_file.parent, commit, f"hub:{name}@{commit}", index["_class_name"])


def locate_model(name: str, revision: str | None = None) -> ModelLocation:
    """Find and check ``name``; raises ``ModelLoadError`` with the cause. Reads no weights."""
    if is_builtin(name):
        variant = builtin_variant(name)
        if variant not in TINY_VARIANTS:
            raise ModelLoadError(f"{name}: no built-in model of that name; built-in: "
                                 f"{', '.join('tiny' if v == 'base' else f'tiny:{v}' for v in TINY_VARIANTS)}")
        return ModelLocation(name, "builtin", None, None, f"builtin:tiny-{variant}-seed0", "builtin")
    path = Path(name)
    if path.is_file():
        raise ModelLoadError(f"{name}: is a single file; sdbatch loads diffusers folders or hub ids "
                             "(model_index.json plus safetensors components)")
    if path.is_dir():
        index_file = path / "model_index.json"
        if not index_file.exists():
            raise ModelLoadError(f"{name}: not a diffusers pipeline folder (no model_index.json)")
        index = _read_index(index_file, name)
        _check_folder(path, name, index)
        return ModelLocation(name, "folder", path, None, folder_fingerprint(path), index["_class_name"])
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ModelLoadError(f"{name}: no such folder, and not a hub id (org/name)")
    return _locate_hub(name, revision)


# -- local fingerprints ---------------------------------------------------------------------------
def _file_digest(path: Path, size: int) -> str:
    """Configs by their bytes; safetensors by header, size and sampled bytes (not gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        if path.suffix != ".safetensors" or size < 8:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
            return h.hexdigest()
        (header_len,) = struct.unpack("<Q", fh.read(8))
        h.update(fh.read(min(header_len, size)))
        h.update(str(size).encode())
        for i in range(_SAMPLES):
            fh.seek(max(0, (size - _SAMPLE_BYTES) * i // max(_SAMPLES - 1, 1)))
            h.update(fh.read(_SAMPLE_BYTES))
    return h.hexdigest()


class _DigestCache:
    """File digests by (absolute path, size, mtime_ns), in the cache folder; best effort."""

    def __init__(self) -> None:
        self.path = cache_dir() / "fingerprints.json"
        try:
            self.entries: dict = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}
        self.changed = False

    def digest(self, file: Path) -> str:
        stat = file.stat()
        key = f"{file.absolute()}|{stat.st_size}|{stat.st_mtime_ns}"
        if key not in self.entries:
            self.entries[key] = _file_digest(file, stat.st_size)
            self.changed = True
        return self.entries[key]

    def save(self) -> None:
        if not self.changed:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(self.entries))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.debug("could not save the fingerprint cache: %s", exc)


def folder_fingerprint(folder: Path) -> str:
    cache = _DigestCache()
    h = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        h.update(str(file.relative_to(folder)).encode() + b"\0" + cache.digest(file).encode())
    cache.save()
    return f"files:{h.hexdigest()}"
