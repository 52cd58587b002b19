"""S3 faults (issue 14): the store goes away while a shard's images are written and comes back (moto
behind a TCP proxy this test stops and starts): the rows that failed for it are error rows of kind
"storage", the run says so (exit 3), and the same command retries them until the job is whole.
The driver's lease works on S3 too."""

from __future__ import annotations

import io
import json
import socket
import threading
import time

import pyarrow.parquet as pq
import pytest

from helpers import invoke, write_manifest
from helpers import free_port, get, keys, put


class TcpProxy:
    """Loopback port -> the S3 server, stopped (connections cut, new ones refused) and started
    again on the same port as an outage would."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.port = free_port()
        self.server: socket.socket | None = None
        self.connections: list[socket.socket] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self.server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def stop(self) -> None:
        server, self.server = self.server, None
        _shut(server)
        with self.lock:
            cut, self.connections = self.connections, []
        for connection in cut:
            _shut(connection)

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.connections += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _shut(sink)
            _shut(source)


def _shut(sock: socket.socket | None) -> None:
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


@pytest.fixture
def proxy(endpoint):
    proxy = TcpProxy(int(endpoint.rsplit(":", 1)[1]))
    proxy.start()
    yield proxy
    proxy.stop()


def metadata_rows(client, bucket: str, prefix: str) -> list[dict]:
    return [row for key in keys(client, bucket, f"{prefix}/metadata/")
            for row in pq.read_table(io.BytesIO(get(client, bucket, key))).to_pylist()]


def test_an_s3_outage_while_images_are_written_fails_rows_the_next_run_retries(tiny_base, client, bucket, proxy,
                                                                                 tmp_path, monkeypatch):
    from sdbatch.jobs.store import layouts
    from sdbatch.jobs.worker import shard_worker as worker

    manifest = write_manifest(tmp_path / "m.parquet", {"id": [f"r{i}" for i in range(4)], "prompt": ["a fox"] * 4,
                                                       "seed": [1, 2, 3, 4], "steps": [1] * 4, "width": [16] * 4,
                                                       "height": [16] * 4})
    out = f"s3://{bucket}/out"
    args = ["run", str(manifest), "--model", tiny_base, "--out", out, "--device", "cpu", "--executor", "local",
            "--shard-size", "2", "--s3-endpoint-url", proxy.url, "--s3-retries", "0"]
    encode, finish = worker.encode_image, layouts.FilesWriter.finish

    def encode_then_go_away(*a, **kw):  # the store goes away as the first image is ready to write ...
        data = encode(*a, **kw)
        if proxy.server is not None and not keys(client, bucket, "out/_job/shards/"):
            proxy.stop()
        return data

    def back_then_finish(self, *a, **kw):  # ... and is back before the shard's metadata is written
        if proxy.server is None:
            proxy.start()
        return finish(self, *a, **kw)

    monkeypatch.setattr(worker, "encode_image", encode_then_go_away)
    monkeypatch.setattr(layouts.FilesWriter, "finish", back_then_finish)
    first = invoke(*args)
    assert first.exit_code == 3, first.output
    assert "incomplete: 2 rows failed for a storage reason" in first.output
    failed = [r for r in metadata_rows(client, bucket, "out") if r["status"] == "error"]
    assert len(failed) == 2 and {r["error_kind"] for r in failed} == {"storage"}
    assert all("cannot write: Could not connect to the endpoint URL" in r["error"] for r in failed), failed
    assert invoke("status", out, "--s3-endpoint-url", proxy.url).exit_code == 3

    monkeypatch.undo()
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert "(2 already done)" in again.output
    rows = metadata_rows(client, bucket, "out")
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    assert invoke("verify", out, "--s3-endpoint-url", proxy.url).exit_code == 0
    assert not keys(client, bucket, "out/_job/lease.json")  # given back


def test_the_lease_on_s3_refuses_a_live_driver_and_takes_over_a_stale_one(tiny_base, client, bucket, endpoint,
                                                                          tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", {"prompt": ["a fox"], "steps": [1], "width": [16],
                                                       "height": [16]})
    out = f"s3://{bucket}/out"
    args = ["run", str(manifest), "--model", tiny_base, "--out", out, "--device", "cpu", "--executor", "local",
            "--s3-endpoint-url", endpoint]

    def plant(host: str, pid: int, beat: float) -> None:
        put(client, bucket, "out/_job/lease.json", json.dumps(
            {"host": host, "pid": pid, "started": beat, "heartbeat": beat, "token": "t"}).encode())

    plant("node-7", 4242, time.time())
    refused = invoke(*args)
    assert refused.exit_code == 2 and "in use by another sdbatch run (pid 4242 on node-7" in refused.output
    assert not keys(client, bucket, "out/_job/plan.json")
    plant("node-7", 4242, time.time() - 3600)
    taken = invoke(*args)
    assert taken.exit_code == 0 and "taking over the lease" in taken.output, taken.output
    assert not keys(client, bucket, "out/_job/lease.json")
