"""``sdbatch tiny-model``: models the project makes itself, for tests and offline trials."""

from __future__ import annotations

import click

from sdbatch.jobs import defaults
from sdbatch.pipeline.model_files import TINY_VARIANTS


@click.command("tiny-model")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--variant", type=click.Choice(TINY_VARIANTS), default="base", show_default=True,
              help="Which pipeline: base (text/image-to-image), inpaint (9-channel UNet), depth (depth-to-image).")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same weights.")
def tiny_model(folder: str, variant: str, seed: int) -> None:
    """Write a tiny random-weight SD pipeline folder (for tests and offline trials; its images are noise)."""
    from sdbatch.pipeline.loading import quiet_libraries
    from sdbatch.pipeline.tiny import write_tiny_model

    quiet_libraries()
    write_tiny_model(folder, variant, seed)
    click.echo(f"wrote tiny {variant} model to {folder}")


@click.command("tiny-lora")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--model", default=defaults.MODEL, show_default=True,
              help="The model the LoRA is for: a built-in tiny name (tiny, tiny:xl), folder or hub id.")
@click.option("--name", default="tiny-lora", show_default=True, help="Writes FOLDER/NAME.safetensors (--lora-dir FOLDER "
                                                                     "then finds it as NAME).")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same weights.")
@click.option("--rank", type=click.IntRange(min=1), default=4, show_default=True, help="LoRA rank.")
def tiny_lora(folder: str, model: str, name: str, seed: int, rank: int) -> None:
    """Write a small random LoRA for MODEL (UNet attention and text encoders), as diffusers'
    training scripts save one (for tests and trying LoRA rows offline; it only changes the noise)."""
    from sdbatch.pipeline.loading import quiet_libraries
    from sdbatch.pipeline.tiny_adapters import write_tiny_lora

    quiet_libraries()
    path = write_tiny_lora(folder, model, name, seed, rank)
    click.echo(f"wrote a random LoRA for {model} to {path}")


@click.command("tiny-embedding")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--model", default=defaults.MODEL, show_default=True,
              help="The model the embedding is for: a built-in tiny name (tiny, tiny:xl), folder or hub id.")
@click.option("--token", default="<tiny-style>", show_default=True, help="The token (SD 1.x/2.x files name it).")
@click.option("--vectors", type=click.IntRange(min=1), default=2, show_default=True, help="Vectors per token.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same vectors.")
def tiny_embedding(path: str, model: str, token: str, vectors: int, seed: int) -> None:
    """Write a random textual-inversion embedding (safetensors) for MODEL (for tests and offline trials)."""
    from sdbatch.pipeline.loading import quiet_libraries
    from sdbatch.pipeline.tiny_adapters import write_tiny_embedding

    quiet_libraries()
    written = write_tiny_embedding(path, model, token, vectors, seed)
    click.echo(f"wrote a random embedding for {model} to {written}")
