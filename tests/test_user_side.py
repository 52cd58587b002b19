"""What a user meets around a job: version and help, refusals in one line with the true cause,
progress measured from the first batch, and honest status codes."""

from __future__ import annotations

import click
import pytest

from helpers import invoke, write_manifest
from sdbatch.cli.main import main
from sdbatch.jobs import progress as progress_module


def test_version_and_help_text_on_every_option():
    version = invoke("--version")
    assert version.exit_code == 0 and "sdbatch, version" in version.output
    missing = []
    for name, command in main.commands.items():
        for param in command.params:
            if isinstance(param, click.Option) and not param.help:
                missing.append(f"{name} {param.opts[0]}")
    assert not missing, missing


def test_status_and_verify_on_a_folder_with_no_job_exit_2(tmp_path):
    for command in ("status", "verify"):
        result = invoke(command, str(tmp_path / "typo"))
        assert result.exit_code == 2, (command, result.output)
        assert "no sdbatch job here" in result.output or "not an sdbatch output" in result.output


def test_a_hub_model_that_is_not_reachable_is_one_line_with_its_cause(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    manifest = write_manifest(tmp_path / "m.parquet", {"prompt": ["a"], "steps": [2]})
    outputs = []
    for executor in ("local", "ray"):  # refused before either starts: the same line
        result = invoke("run", str(manifest), "--model", "nobody/no-such-model", "--out", str(tmp_path / executor),
                        "--executor", executor)
        assert result.exit_code == 2 and "Traceback" not in result.output
        outputs.append(result.output.strip().splitlines()[-1])
    assert outputs[0] == outputs[1]
    assert "nobody/no-such-model: not in the local Hugging Face cache, and HF_HUB_OFFLINE is set" in outputs[0]


def test_a_network_failure_names_the_network(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    from huggingface_hub.errors import LocalEntryNotFoundError

    from sdbatch.pipeline.model_files import _hub_cause

    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError as refused:
            raise LocalEntryNotFoundError("cannot find the requested files in the local cache") from refused
    except LocalEntryNotFoundError as exc:
        cause = _hub_cause(exc)
    assert cause.startswith("cannot reach the Hugging Face Hub") and "Connection refused" in cause


def test_rate_and_eta_are_measured_from_the_first_batch(monkeypatch):
    now = {"t": 1000.0}
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: now["t"])
    progress = progress_module.Progress(total=1000, tty=False)
    now["t"] += 120.0  # two minutes of Ray start-up and model loads
    progress.advance(10)  # the first batch
    now["t"] += 10.0
    progress.advance(100)  # 100 rows in the next 10 s
    assert progress.rate == pytest.approx(10.0)
    assert "ETA 1.5 min" in progress.line()  # 890 rows left at 10 rows/s, not at 110 rows / 130 s


def test_a_malformed_model_index_is_one_line_on_both_executors(tiny_base, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_base, broken)
    (broken / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline", "unet": [')
    manifest = write_manifest(tmp_path / "m.parquet", {"prompt": ["a"], "steps": [2]})
    lines = []
    for executor in ("local", "ray"):  # checked before either starts
        result = invoke("run", str(manifest), "--model", str(broken), "--out", str(tmp_path / executor),
                        "--executor", executor)
        assert result.exit_code == 2 and "Traceback" not in result.output
        lines.append(result.output.strip().splitlines()[-1])
    assert lines[0] == lines[1] and "cannot read model_index.json" in lines[0]
