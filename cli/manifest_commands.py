"""``sdbatch validate`` and ``sdbatch sweep``: manifest commands that touch no GPU."""

from __future__ import annotations

import sys

import click
import pyarrow as pa

from sdbatch.manifests.problems import ManifestError
from sdbatch.manifests.schema import CLIP_SKIP_RANGE, SEED_MAX, STEPS_RANGE
from sdbatch.manifests.sweep import (
    Axis,
    SweepError,
    output_format,
    parse_float_list,
    parse_int_list,
    parse_lora_sets,
    parse_sizes,
    plan_sweep,
    read_prompts_file,
    write_sweep,
)
from sdbatch.manifests.validate import known_schedulers

from . import exit_codes
from .options import plan_options, prompt_options, s3_from, s3_options

DEFAULT_MAX_ROWS = 100_000


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def check_lines(found, batch_size: int) -> list[str]:
    """What ``validate`` and ``run --dry-run`` print of a ``jobs.driver.DryRun``: the manifest, the
    plan (batches counted from the planner's shards), the models and, for a dry run, OUT."""
    report, plan = found.planned.report, found.plan
    shard_size = found.planned.planner.shard_size
    lines = [f"manifest: {report.path} ({_count(report.files, 'file')})"]
    rows = f"rows: {report.rows:,}"
    if report.duplicate_rows:
        n = report.duplicate_rows
        rows += (f" ({report.distinct_rows:,} distinct; {n:,} exact duplicate row{'s' if n != 1 else ''}"
                 f" {'are' if n != 1 else 'is'} generated once)")
    lines.append(rows)
    if not report.problems:
        modes = ", ".join(f"{mode} {n:,}" for mode, n in sorted(report.modes.items()))
        lines += [
            f"modes: {modes}",
            f"distinct prompts: {report.distinct_prompts:,}",
            f"planned batches: {found.batches(batch_size):,} (batch size {batch_size}, shard size {shard_size}, "
            f"{_count(len(report.group_sizes), 'batching group')})",
        ]
    if report.extra_columns:
        lines.append(f"extra columns (carried through): {', '.join(report.extra_columns)}")
    lines += [f"note: {note}" for note in report.notes]
    if found.models is not None:
        checked = found.models
        shown = [f"{name} ({loc.kind}, {'SDXL' if loc.family == 'sdxl' else 'SD 1.x/2.x'})"
                 for name, loc in checked.locations.items()]
        if checked.refiner is not None:
            shown.append(f"--refiner {checked.refiner.name}")
        if plan is not None:
            lines.append(f"shards: {len(plan.shards):,} (shard size {shard_size:,}), {plan.rows:,} distinct rows")
        lines.append(f"models: {', '.join(shown) or 'none'}")
    if found.out_state is not None:
        lines.append(f"out: {found.out_state}")
    if found.problems:
        lines.append(f"problems ({len(found.problems)}):")
        lines += [f"  {p.message()}" for p in found.problems]
    else:
        lines.append("problems: none")
    return lines


@click.command()
@click.argument("manifest")
@plan_options
@prompt_options
@s3_options
def validate(manifest: str, model: str, refiner: str | None, batch_size: int, shard_size: int,
             labels: tuple[str, ...], quantize: str, prompt_syntax: str, embeddings: tuple[str, ...],
             lora_dir: str | None, s3_endpoint_url, s3_path_style, s3_retries) -> None:
    """Check every row of MANIFEST (a Parquet, CSV, TSV or JSON Lines file, folder or glob), the
    models, LoRAs and embeddings its rows name, and plan it as run does (no weights are read,
    nothing is written): run --dry-run without OUT.

    Exits 0 when the manifest can run, 2 when run would refuse it.
    """
    from sdbatch.jobs.driver import JobRefused, RunRequest, check_job
    from sdbatch.jobs.worker.worker_config import WorkerConfig
    from sdbatch.pipeline.speed.options import SpeedOptions

    worker = WorkerConfig(refiner=refiner, embeddings=tuple(embeddings), lora_dir=lora_dir,
                          s3=s3_from(s3_endpoint_url, s3_path_style, s3_retries),
                          speed=SpeedOptions(compile="off", cuda_graphs="off", quantize=quantize))
    request = RunRequest(manifest=manifest, out="", model=model, worker=worker, shard_size=shard_size,
                         labels=labels, prompt_syntax=prompt_syntax)
    try:
        found = check_job(request)
    except ManifestError as exc:
        click.echo(f"error: manifest refused: {exc}", err=True)
        sys.exit(exit_codes.REFUSED)
    except JobRefused as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exit_codes.REFUSED)
    for line in check_lines(found, batch_size):
        click.echo(line)
    sys.exit(exit_codes.REFUSED if found.problems else exit_codes.OK)


_AXIS_ALIASES = {"prompts": "prompt", "seed": "seeds", "negative_prompt": "negative-prompt",
                 "guidance_scale": "guidance", "sizes": "size", "schedulers": "scheduler", "lora": "loras",
                 "clip_skip": "clip-skip"}


def _axis_name(name: str) -> str:
    """Axis names as options spell them (``seeds``), also accepting column spellings (``seed``)."""
    name = name.strip()
    return _AXIS_ALIASES.get(name, name)


def _axes(prompt, prompts_file, negative_prompt, seeds, guidance, steps, scheduler, size, strength, loras=(),
          clip_skip=()) -> list[Axis]:
    axes = []
    if prompt or prompts_file:
        parts = [pa.table({"prompt": pa.array(list(prompt), pa.string())})] if prompt else []
        if prompts_file:
            parts.append(read_prompts_file(prompts_file))
        table = pa.concat_tables(parts, promote_options="permissive")
        axes.append(Axis("prompt", {n: table.column(n).combine_chunks() for n in table.column_names}))
    if negative_prompt:
        axes.append(Axis("negative-prompt", {"negative_prompt": pa.array(list(negative_prompt), pa.string())}))
    if seeds:
        axes.append(Axis("seeds", {"seed": pa.array(parse_int_list("--seeds", seeds, 0, SEED_MAX), pa.uint64())}))
    if guidance:
        axes.append(Axis("guidance", {"guidance_scale": pa.array(parse_float_list("--guidance", guidance), pa.float64())}))
    if steps:
        values = parse_int_list("--steps", steps, 0, 10 * STEPS_RANGE[1])
        axes.append(Axis("steps", {"steps": pa.array(values, pa.int64())}))
    if scheduler:
        names = [s.strip() for value in scheduler for s in value.split(",") if s.strip()]
        axes.append(Axis("scheduler", {"scheduler": pa.array(names, pa.string())}))
    if size:
        widths, heights = parse_sizes("--size", size)
        axes.append(Axis("size", {"width": pa.array(widths, pa.int64()), "height": pa.array(heights, pa.int64())}))
    if strength:
        axes.append(Axis("strength", {"strength": pa.array(parse_float_list("--strength", strength), pa.float64())}))
    if loras:
        axes.append(Axis("loras", {"loras": pa.array(parse_lora_sets("--loras", loras), pa.string())}))
    if clip_skip:
        values = parse_int_list("--clip-skip", clip_skip, *CLIP_SKIP_RANGE)
        axes.append(Axis("clip-skip", {"clip_skip": pa.array(values, pa.int64())}))
    return axes


@click.command()
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False),
              help="Manifest to write: .parquet, .csv, .tsv or .jsonl (the extension picks the format).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists (refused otherwise).")
@click.option("--id-template", default=None, metavar="TEMPLATE",
              help="Row ids, e.g. '{prompt_index}-s{seed}-g{guidance_scale}': fields are the sweep's columns, "
                   "COLUMN_index (position in its axis) and row. Default: one part an axis, e.g. p0-s7-g5_5. "
                   "'' writes no id column (ids derived from each row at run time).")
@click.option("--prompt", multiple=True, help="A prompt (repeatable).")
@click.option("--prompts", "prompts_file", type=click.Path(exists=True, dir_okay=False),
              help="Prompts file: text (one a line), CSV or JSONL with a 'prompt' column; other columns "
                   "travel with each prompt.")
@click.option("--negative-prompt", multiple=True, help="A negative prompt (repeatable).")
@click.option("--seeds", multiple=True, help="Seeds: lists and ranges, e.g. 0-99,1000.")
@click.option("--guidance", multiple=True, help="Guidance scales, e.g. 3,5.5,7.5.")
@click.option("--steps", multiple=True, help="Step counts: lists and ranges, e.g. 20,30,50.")
@click.option("--scheduler", multiple=True, help="Scheduler names, e.g. ddim,euler_a.")
@click.option("--size", multiple=True, help="Sizes WIDTHxHEIGHT, e.g. 512x512,768x512.")
@click.option("--strength", multiple=True, help="Strengths in (0, 1], e.g. 0.5,0.8.")
@click.option("--loras", multiple=True, metavar="SET",
              help="A set of LoRAs per option, name:weight[,name:weight...]; a weight may be a range "
                   "START..STOP/STEP (one set per weight), 'none' is no LoRA. E.g. --loras none "
                   "--loras style:0.2..1.0/0.2.")
@click.option("--clip-skip", multiple=True, help="clip_skip values (diffusers' count), e.g. 0,1,2.")
@click.option("--zip", "zips", multiple=True,
              help="Axes paired element by element instead of crossed, e.g. --zip seeds,guidance "
                   "(repeatable; one group per option).")
@click.option("--max-rows", type=click.IntRange(min=1), default=DEFAULT_MAX_ROWS, show_default=True,
              help="Refuse a sweep with more rows than this (raise it to write a bigger one).")
def sweep(out, force, id_template, prompt, prompts_file, negative_prompt, seeds, guidance, steps, scheduler,
          size, strength, loras, clip_skip, zips, max_rows) -> None:
    """Write a manifest whose rows are the cartesian product of the given axes.

    Exits 0 when written, 2 when refused (bad options, an existing OUT without --force, ids that
    are not unique, or more rows than --max-rows).
    """
    try:
        fmt = output_format(out, force)
        axes = _axes(prompt, prompts_file, negative_prompt, seeds, guidance, steps, scheduler, size, strength,
                     loras, clip_skip)
        groups = [[_axis_name(n) for n in z.split(",") if n.strip()] for z in zips]
        plan = plan_sweep(axes, groups, known_schedulers(), id_template)
    except SweepError as exc:
        click.echo(f"error: sweep refused: {exc}", err=True)
        sys.exit(exit_codes.REFUSED)
    click.echo(f"sweep: {plan.describe()} = {plan.rows:,} rows")
    if plan.rows > max_rows:
        click.echo(f"error: sweep refused: {plan.rows:,} rows is more than --max-rows {max_rows:,}; "
                   "raise --max-rows to write it", err=True)
        sys.exit(exit_codes.REFUSED)
    try:
        write_sweep(plan, out, fmt)
    except SweepError as exc:
        click.echo(f"error: sweep refused: {exc}", err=True)
        sys.exit(exit_codes.REFUSED)
    except OSError as exc:
        click.echo(f"error: sweep refused: cannot write {out}: {exc}", err=True)
        sys.exit(exit_codes.REFUSED)
    click.echo(f"wrote {plan.rows:,} rows to {out}")
