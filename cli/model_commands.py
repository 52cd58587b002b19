"""``sdbatch tiny-model``: models the project makes itself, for tests and offline trials."""

from __future__ import annotations

import click

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
