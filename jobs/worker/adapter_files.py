"""Where a job's LoRAs and textual-inversion embeddings are: names -> local safetensors files, each
with its SHA-256 (recorded in the metadata and in the job's fingerprint, so a resume refuses a
changed file). No torch here: the driver resolves every file before planning is accepted, and
each worker again before loading it.

A LoRA name (``loras`` column) is, in this order:

1. a file in ``--lora-dir DIR`` (local or ``s3://``): ``NAME`` or ``NAME.safetensors``;
2. an ``s3://`` URI of a ``.safetensors`` object;
3. a local ``.safetensors`` path;
4. a Hugging Face Hub id, ``org/repo`` (its ``pytorch_lora_weights.safetensors``, as diffusers
   loads it) or ``org/repo/path/file.safetensors``.

``--embedding PATH_OR_HUB_ID[:TOKEN]``: a local ``.safetensors`` file or a hub id (``org/repo``: its
``learned_embeds.safetensors``, as diffusers loads it). TOKEN defaults to the file's own: the key
of a diffusers embedding, else (A1111 and SDXL files) the file name without its extension, as
AUTOMATIC1111 names embeddings.

Only safetensors are read: a pickle checkpoint can run code when loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

from sdbatch.manifests.remote import S3Options, is_s3_uri
from sdbatch.pipeline.cache import cache_dir

HUB_LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE
HUB_EMBEDDING_FILE = "learned_embeds.safetensors"  # diffusers' TEXT_INVERSION_NAME_SAFE
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+\.safetensors)?$")
# A textual-inversion token as prompts write it: <name>, no spaces or colons (not <lora:...>).
TOKEN_IN_TEXT = r"<[^<>\s:]+>"


class AdapterError(ValueError):
    """A LoRA or embedding that cannot be used; the message says why, in one line."""


@dataclass(frozen=True)
class AdapterFile:
    name: str  # as the row or option wrote it
    path: str  # the local safetensors file
    sha256: str


def _check_safetensors(path: Path, what: str) -> list[str]:
    """The tensor names in ``path``'s header; AdapterError when it is not a safetensors file."""
    try:
        with open(path, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            if length > 100 * 2**20:
                raise ValueError("header too large")
            header = json.loads(fh.read(length))
    except (OSError, struct.error, ValueError) as exc:
        raise AdapterError(f"{what}: {path} is not a safetensors file ({exc})") from None
    return [k for k in header if k != "__metadata__"]


_digests: dict[tuple[str, int, int], str] = {}
_digests_lock = threading.Lock()


def sha256_file(path: Path) -> str:
    """The file's SHA-256 (remembered by path, size and modification time in this process)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _digests_lock:
        if key in _digests:
            return _digests[key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    with _digests_lock:
        _digests[key] = h.hexdigest()
    return _digests[key]


def _refuse_pickle(name: str, what: str) -> None:
    if name.lower().endswith(PICKLE_SUFFIXES):
        raise AdapterError(f"{what} {name}: a pickle checkpoint; sdbatch loads safetensors only "
                           "(convert it with safetensors.torch.save_file)")


def _from_s3(uri: str, options: S3Options, what: str) -> Path:
    """The object, downloaded once into the cache folder (named by its content's SHA-256)."""
    from sdbatch.jobs.store.s3 import read_object
    from sdbatch.jobs.store.storage import StorageError

    try:
        data = read_object(uri, options)
    except FileNotFoundError:
        raise AdapterError(f"{what} {uri}: no such object") from None
    except StorageError as exc:
        raise AdapterError(f"{what} {exc}") from None
    digest = hashlib.sha256(data).hexdigest()
    folder = cache_dir() / "adapters"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{digest}.safetensors"
    if not path.exists():
        tmp = folder / f".{digest}.{os.getpid()}.{threading.get_ident()}"
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return path


def _from_hub(name: str, default_file: str, what: str) -> Path:
    from huggingface_hub import hf_hub_download

    parts = name.split("/")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:]) or default_file
    try:
        return Path(hf_hub_download(repo, filename))
    except Exception as exc:  # noqa: BLE001 - every hub failure is one line with its cause
        from sdbatch.pipeline.model_files import _hub_cause

        raise AdapterError(f"{what} {name}: {_hub_cause(exc)}") from None


def _is_hub_id(name: str) -> bool:
    """org/repo or org/repo/path/file.safetensors (a/b.safetensors reads as a missing local file)."""
    if name.startswith((".", "/", "~")) or not _HUB_ID.match(name):
        return False
    return not (name.count("/") == 1 and name.endswith(".safetensors"))


class LoraFiles:
    """Resolves LoRA names (see the module docstring); each name once per process."""

    def __init__(self, lora_dir: str | None = None, s3: S3Options = S3Options()):
        self.lora_dir = lora_dir.rstrip("/") if lora_dir else None
        self.s3 = s3
        self._found: dict[str, AdapterFile] = {}
        self._lock = threading.Lock()

    def resolve(self, name: str) -> AdapterFile:
        with self._lock:
            if name not in self._found:
                path = self._locate(name)
                _check_safetensors(path, f"LoRA {name}")
                self._found[name] = AdapterFile(name, str(path), sha256_file(path))
            return self._found[name]

    def _in_dir(self, name: str) -> Path | None:
        if not self.lora_dir or is_s3_uri(name) or name.startswith("/"):
            return None
        file = name if name.endswith(".safetensors") else f"{name}.safetensors"
        if is_s3_uri(self.lora_dir):
            try:
                return _from_s3(f"{self.lora_dir}/{file}", self.s3, "LoRA")
            except AdapterError as exc:
                if "no such object" in str(exc):
                    return None
                raise
        path = Path(self.lora_dir) / file
        if path.is_file():
            return path
        pickles = [p for p in (Path(self.lora_dir) / f"{name}{s}" for s in PICKLE_SUFFIXES) if p.is_file()]
        if pickles:
            _refuse_pickle(pickles[0].name, f"LoRA {name}: --lora-dir holds")
        return None

    def _locate(self, name: str) -> Path:
        _refuse_pickle(name, "LoRA")
        found = self._in_dir(name)
        if found is not None:
            return found
        if is_s3_uri(name):
            return _from_s3(name, self.s3, "LoRA")
        path = Path(name).expanduser()
        if path.is_file():
            return path
        if _is_hub_id(name):
            return _from_hub(name, HUB_LORA_FILE, "LoRA")
        where = f"no {name}.safetensors in --lora-dir {self.lora_dir}" if self.lora_dir else "no --lora-dir given"
        raise AdapterError(f"unknown LoRA {name!r}: {where}, and it is not a file, an s3:// URI or a hub id")


@dataclass(frozen=True)
class EmbeddingSpec:
    """``--embedding`` as written: PATH_OR_HUB_ID[:TOKEN]."""

    source: str
    token: str | None = None

    @classmethod
    def parse(cls, text: str) -> "EmbeddingSpec":
        source, sep, token = text.rpartition(":")
        if sep and source and token and "/" not in token and "\\" not in token:
            return cls(source, token)
        return cls(text)


@dataclass(frozen=True)
class EmbeddingFile:
    spec: str  # the option as written
    path: str
    token: str
    sha256: str


def resolve_embedding(text: str) -> EmbeddingFile:
    spec = EmbeddingSpec.parse(text)
    _refuse_pickle(spec.source, "--embedding")
    path = Path(spec.source).expanduser()
    if not path.is_file():
        if not _is_hub_id(spec.source):
            raise AdapterError(f"--embedding {text}: no such file, and not a hub id (org/name)")
        path = _from_hub(spec.source, HUB_EMBEDDING_FILE, "--embedding")
    keys = _check_safetensors(path, f"--embedding {text}")
    token = spec.token
    if token is None:
        token = keys[0] if len(keys) == 1 and keys[0] not in ("emb_params", "string_to_param") else path.stem
    return EmbeddingFile(text, str(path), token, sha256_file(path))
