"""The ``sdbatch`` command group."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import click

from . import logs
from .manifest_commands import sweep, validate
from .model_commands import tiny_embedding, tiny_lora, tiny_model
from .output_commands import status, verify
from .report_command import report
from .run_command import run


def _version() -> str:
    try:
        return version("sdbatch")
    except PackageNotFoundError:
        return "unknown"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output: -v shows other libraries' warnings, -vv debug.")
@click.version_option(_version(), "--version", prog_name="sdbatch")
@click.pass_context
def main(ctx: click.Context, verbose: int) -> None:
    """sdbatch: generate Stable Diffusion images in bulk from manifests (one row per image)."""
    ctx.obj = {"verbose": verbose}
    logs.configure(verbose)


for command in (run, validate, sweep, status, verify, report, tiny_model, tiny_lora, tiny_embedding):
    main.add_command(command)


if __name__ == "__main__":
    main()
