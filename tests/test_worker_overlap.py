"""The device does not wait on storage: while one shard's tar is still uploading, the next shard
(run on a second thread, as a Ray actor runs its two shards in flight) already generates."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from conftest import write_manifest
from sdbatch.jobs.layouts import OutputSpec
from sdbatch.jobs.storage import LocalStorage
from sdbatch.jobs.worker import ShardWorker, WorkerConfig
from sdbatch.manifests.reader import load_rows


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


def test_next_shard_generates_while_the_previous_shards_upload_is_in_flight(tiny_base, tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", {"id": list("abcd"), "prompt": list("abcd"), "steps": [2] * 4})
    rows = load_rows(manifest, tiny_base)
    storage = SlowUploads(tmp_path / "out")
    worker = ShardWorker(storage, WorkerConfig(device="cpu", batch_size=2, output=OutputSpec(layout="webdataset")))
    worker.load([tiny_base])
    second_generated = threading.Event()
    threads = ThreadPoolExecutor(2)
    try:
        first = threads.submit(worker.run_shard, "00000", rows[:2])
        assert storage.upload_started.wait(300)
        second = threads.submit(worker.run_shard, "00001", rows[2:],
                                on_rows=lambda done, failed: second_generated.set())
        assert second_generated.wait(120), "the second shard waited for the first one's upload"
        assert not first.done()  # still uploading, and the device was busy meanwhile
        storage.release.set()
        assert first.result().ok == 2 and second.result().ok == 2
    finally:
        storage.release.set()
        threads.shutdown(wait=True)
        worker.close()
    assert sorted(p.name for p in (tmp_path / "out" / "shards").iterdir()) == ["00000.tar", "00001.tar"]
