"""The device does not wait on storage: while one shard's tar is still uploading, the next shard
(run on a second thread, as a Ray actor runs its two shards in flight) already generates."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from helpers import write_manifest
from sdbatch.jobs.executor import ShardProgress
from sdbatch.jobs.planning import plan_manifest
from sdbatch.jobs.store.layouts import OutputSpec
from sdbatch.jobs.store.outdir import OutputFolder
from sdbatch.jobs.store.storage import LocalStorage
from sdbatch.jobs.worker.shard_worker import ShardWorker
from sdbatch.jobs.worker.worker_config import WorkerConfig
from sdbatch.manifests.source import open_manifest


class SlowUploads(LocalStorage):
    """Local disk whose shard-tar writes hold until ``release`` is set: a slow object store."""

    def __init__(self, root):
        super().__init__(root)
        self.release = threading.Event()
        self.upload_started = threading.Event()

    def write_fileobj(self, relpath, source):
        if relpath.endswith(".tar"):
            self.upload_started.set()
            assert self.release.wait(300), "the test never released the upload"
        super().write_fileobj(relpath, source)


def planned_folder(manifest: Path, model: str, storage, shard_size: int) -> OutputFolder:
    folder = OutputFolder(storage)
    planned = plan_manifest(open_manifest(manifest), model, shard_size, storage.staging_folder())
    for shard in planned.shards:
        folder.move_inputs_in(shard.name, planned.planner.staged_file(shard.name))
    return folder


def test_next_shard_generates_while_the_previous_shards_upload_is_in_flight(tiny_base, tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", {"id": list("abcd"), "prompt": list("abcd"), "steps": [2] * 4})
    storage = SlowUploads(tmp_path / "out")
    folder = planned_folder(manifest, tiny_base, storage, shard_size=2)
    worker = ShardWorker(folder, WorkerConfig(device="cpu", batch_size=2, output=OutputSpec(layout="webdataset")))
    worker.load([tiny_base])
    second_generated = threading.Event()

    def run(shard: str, generated: threading.Event | None = None):
        events = []
        for event in worker.run_shard(shard):
            events.append(event)
            if generated is not None and isinstance(event, ShardProgress) and event.rows == 2:
                generated.set()  # every row of the shard generated
        return events[-1]

    threads = ThreadPoolExecutor(2)
    try:
        first = threads.submit(run, "00000")
        assert storage.upload_started.wait(300)
        second = threads.submit(run, "00001", second_generated)
        assert second_generated.wait(120), "the second shard waited for the first one's upload"
        # the first shard's tar was still on its way: nothing of it visible yet
        assert not (tmp_path / "out" / "shards" / "00000.tar").exists()
        storage.release.set()
        assert first.result().ok == 2 and second.result().ok == 2
    finally:
        storage.release.set()
        threads.shutdown(wait=True)
        worker.close()
    assert sorted(p.name for p in (tmp_path / "out" / "shards").iterdir()) == ["00000.tar", "00001.tar"]
