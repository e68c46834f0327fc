"""S3 outages and broken connections, injected for real: storage must ride out short ones and fail cleanly otherwise.

Each test runs its own moto S3 server (a subprocess on a free loopback port),
so stopping it disturbs no other test. Two kinds of fault:

* the server process is stopped (connections refused) and maybe started
  again on the same port: moto keeps its data in memory, so the restarted
  server is preloaded with the bucket (and objects) a real store would still
  have, before it listens;
* a TCP proxy between boto3 and a live server (a failing load balancer) drops
  connections, or cuts them after N bytes of a request or a response. The
  server keeps its state, so we can look at what a failed write left behind.

Retries are counted with a botocore ``before-send`` hook: one event per HTTP
attempt. Every wait is bounded.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
import time

import boto3
import pytest

from conftest import S3Server, free_port, wait_for_port
from kubetorch_example import storage
from kubetorch_example.data import load_dataset, prepare_dataset
from kubetorch_example.storage import StorageError

BUCKET = "fault-bucket"
DATA = bytes(range(256)) * 4096  # 1 MiB

_PRELOADED_SERVER = r"""
import json, sys
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends
from moto.server import main

port, state = sys.argv[1], json.load(open(sys.argv[2]))
backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
for bucket in state["buckets"]:
    backend.create_bucket(bucket, "us-east-1")
for bucket, key, hex_data in state["objects"]:
    backend.put_object(bucket, key, bytes.fromhex(hex_data))
main(["-H", "127.0.0.1", "-p", port])
"""


class PreloadedS3Server(S3Server):
    """conftest's S3Server, but every (re)start comes up already holding ``buckets`` and ``objects``."""

    def __init__(self, tmp_path, buckets=(BUCKET,), objects=()):
        super().__init__()
        self.state = tmp_path / f"s3-state-{self.port}.json"
        self.state.write_text(json.dumps({
            "buckets": list(buckets),
            "objects": [[b, k, v.hex()] for b, k, v in objects],
        }))

    def start(self):
        cmd = [sys.executable, "-c", _PRELOADED_SERVER, str(self.port), str(self.state)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.proc)

    def client(self):
        """A boto3 client straight to the server (no proxy, no retries): to see what is really stored."""
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.url, config=Config(retries={"total_max_attempts": 1}))


class FlakyProxy:
    """A TCP proxy to ``target_port``: up or down, and optionally cutting connections after N bytes."""

    def __init__(self, target_port: int):
        self.port, self.target = free_port(), target_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.cut_request_after: int | None = None  # bytes client -> server per connection, then reset
        self.cut_response_after: int | None = None  # bytes server -> client per connection, then reset
        self.cuts_left = 1_000_000  # how many connections to cut before passing everything
        self._listener = None
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()

    def up(self):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.05)
        self._listener, self._stopped = listener, threading.Event()
        threading.Thread(target=self._accept, args=(listener, self._stopped), daemon=True).start()

    def down(self):
        """Refuse new connections and reset the open ones."""
        self._stopped.set()
        if self._listener:
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in list(self._sockets):
                self._reset(sock)

    def _reset(self, sock):
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked on this socket
        except OSError:
            pass
        sock.close()
        self._sockets.discard(sock)

    def _accept(self, listener, stopped):
        while not stopped.is_set():
            try:
                client, _ = listener.accept()
            except OSError:  # timeout, or closed by down()
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:  # the server behind is down: the client sees its connection reset
                self._reset(client)
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets |= {client, server}
                cut = self.cuts_left > 0 and (self.cut_request_after, self.cut_response_after) != (None, None)
                self.cuts_left -= cut
            up_limit, down_limit = (self.cut_request_after, self.cut_response_after) if cut else (None, None)
            for args in ((client, server, up_limit), (server, client, down_limit)):
                threading.Thread(target=self._pump, args=(*args, (client, server)), daemon=True).start()

    def _pump(self, src, dst, limit, pair):
        sent = 0
        try:
            while data := src.recv(65536):
                if limit is not None and sent + len(data) > limit:
                    dst.sendall(data[: limit - sent])
                    time.sleep(0.05)  # let the partial bytes arrive, then reset both sides
                    with self._lock:
                        for sock in pair:
                            self._reset(sock)
                    return
                dst.sendall(data)
                sent += len(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class Attempts:
    """Counts the HTTP attempts storage's client makes (botocore emits before-send once per attempt)."""

    def __init__(self, client):
        self.count = 0
        client.meta.events.register("before-send.s3", self._count)

    def _count(self, **_):
        self.count += 1


@pytest.fixture
def use_s3(monkeypatch):
    """Point storage at an endpoint through AWS_ENDPOINT_URL, with MNIST_S3_MAX_ATTEMPTS; return its counter."""

    def point(url: str, max_attempts: int) -> Attempts:
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")  # pragma: allowlist secret
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.setenv("MNIST_S3_MAX_ATTEMPTS", str(max_attempts))
        storage._s3.cache_clear()
        client = storage._s3()
        assert client.meta.endpoint_url == url
        assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": max_attempts}, (
            "storage._s3() must read MNIST_S3_MAX_ATTEMPTS when it builds the client, as the number of "
            f"attempts in all; got {client.meta.config.retries}"
        )
        return Attempts(client)

    yield point
    storage._s3.cache_clear()


@pytest.fixture
def server(tmp_path):
    srv = PreloadedS3Server(tmp_path)
    srv.start()
    yield srv
    srv.stop()


def _restart_later(srv: S3Server, delay: float) -> tuple[threading.Thread, dict]:
    """Start ``srv`` again after ``delay`` seconds, in a background thread; the dict says when it listened."""
    seen: dict = {}

    def restart():
        time.sleep(delay)
        try:
            srv.start()
            seen["up_at"] = time.monotonic()
        except BaseException as exc:  # reported by the test, not lost in the thread
            seen["error"] = exc

    thread = threading.Thread(target=restart, daemon=True)
    thread.start()
    return thread, seen


# --- (a) a short outage is ridden out by botocore's standard retries ---------------------------------


def test_write_rides_out_a_server_restart(server, use_s3):
    attempts = use_s3(server.url, max_attempts=12)
    server.stop()
    started = time.monotonic()
    thread, seen = _restart_later(server, delay=1.0)
    uri = f"s3://{BUCKET}/runs/r1/model.pt"
    assert storage.write_bytes(uri, DATA) == storage.sha256(DATA)
    elapsed = time.monotonic() - started
    thread.join(timeout=30)
    assert "error" not in seen, seen
    assert attempts.count >= 2 and seen["up_at"] - started <= elapsed, (attempts.count, elapsed)  # met the outage
    assert elapsed < 30
    assert storage.read_bytes(uri) == DATA
    assert server.client().get_object(Bucket=BUCKET, Key="runs/r1/model.pt")["Body"].read() == DATA


def test_read_rides_out_a_server_restart(tmp_path, use_s3):
    srv = PreloadedS3Server(tmp_path, objects=[(BUCKET, "runs/r1/dataset.pt", DATA)])
    srv.start()
    try:
        attempts = use_s3(srv.url, max_attempts=12)
        srv.stop()
        started = time.monotonic()
        thread, seen = _restart_later(srv, delay=1.0)
        assert storage.read_bytes(f"s3://{BUCKET}/runs/r1/dataset.pt") == DATA
        elapsed = time.monotonic() - started
        thread.join(timeout=30)
        assert "error" not in seen, seen
        assert attempts.count >= 2 and seen["up_at"] - started <= elapsed < 30, (attempts.count, elapsed)
    finally:
        srv.stop()


def test_read_recovers_from_a_connection_cut_mid_body(server, use_s3):
    """botocore's retries end with the response headers; a reset halfway through the body must be retried too."""
    server.client().put_object(Bucket=BUCKET, Key="big.pt", Body=DATA)
    proxy = FlakyProxy(server.port)
    proxy.up()
    try:
        use_s3(proxy.url, max_attempts=3)
        proxy.cut_response_after, proxy.cuts_left = 200 * 1024, 1  # the first connection dies at 200 KiB of 1 MiB
        assert storage.read_bytes(f"s3://{BUCKET}/big.pt") == DATA
        assert proxy.cuts_left == 0  # the cut did happen
    finally:
        proxy.down()


# --- (b) a longer outage fails within a bounded time, and writes nothing -----------------------------


def test_write_gives_up_in_bounded_time_when_the_server_stays_down(server, use_s3):
    attempts = use_s3(server.url, max_attempts=3)
    server.stop()
    uri = f"s3://{BUCKET}/runs/r1/model.pt"
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        storage.write_bytes(uri, DATA)
    elapsed = time.monotonic() - started
    assert f"could not write {uri}" in str(info.value)
    assert attempts.count == 3
    assert elapsed < 5, elapsed  # 3 refused connections and two backoffs (at most 0.05 s + 0.1 s)
    # Back up: nothing is at the key. (moto forgets everything on restart, so this alone proves little;
    # test_upload_cut_mid_body_leaves_nothing shows it against a server that keeps its state.)
    server.start()
    assert not storage.exists(uri)


def test_every_operation_reports_an_unreachable_endpoint_as_a_storage_error(server, use_s3):
    use_s3(server.url, max_attempts=2)
    server.client().put_object(Bucket=BUCKET, Key="m.json", Body=b"{}")
    server.stop()
    uri = f"s3://{BUCKET}/m.json"
    for call in (storage.read_bytes, storage.read_json, storage.exists):
        with pytest.raises(StorageError, match=uri):
            call(uri)
    with pytest.raises(StorageError, match="AWS_ENDPOINT_URL") as info:
        storage.check_writable(f"s3://{BUCKET}/runs")
    assert f"'{BUCKET}'" in str(info.value)


def test_upload_cut_mid_body_leaves_nothing(server, use_s3):
    """Every attempt's connection is reset after 64 KiB of a 1 MiB PutObject: the old object stays whole."""
    proxy = FlakyProxy(server.port)
    proxy.up()
    try:
        attempts = use_s3(proxy.url, max_attempts=3)
        old_uri, new_uri = f"s3://{BUCKET}/runs/r1/model.pt", f"s3://{BUCKET}/runs/r1/new.pt"
        storage.write_bytes(old_uri, b"old model")
        proxy.cut_request_after = 64 * 1024
        attempts.count = 0
        for uri in (old_uri, new_uri):
            with pytest.raises(StorageError, match=f"could not write {uri}"):
                storage.write_bytes(uri, DATA)
        assert attempts.count == 6  # each write retried to the limit
    finally:
        proxy.down()
    direct = server.client()
    assert direct.get_object(Bucket=BUCKET, Key="runs/r1/model.pt")["Body"].read() == b"old model"
    assert direct.list_objects_v2(Bucket=BUCKET, Prefix="runs/r1/new")["KeyCount"] == 0


# --- (c) a multi-step writer that fails leaves no manifest -----------------------------------------


def test_prepare_dataset_against_a_stopped_server_fails_without_a_manifest(server, use_s3, mnist_root):
    use_s3(server.url, max_attempts=2)
    server.stop()
    output = f"s3://{BUCKET}/runs/r1/dataset"
    started = time.monotonic()
    with pytest.raises(StorageError, match=f"could not write {output}/dataset.pt"):
        prepare_dataset(str(mnist_root), output)
    assert time.monotonic() - started < 30
    server.start()
    assert not storage.exists(f"{output}/dataset.json")


def test_prepare_dataset_cut_off_half_way_leaves_no_manifest_and_a_rerun_completes(server, use_s3, mnist_root):
    """S3 becomes unreachable after dataset.pt is stored: no dataset.json, so readers see the output as incomplete."""
    proxy = FlakyProxy(server.port)
    proxy.up()
    try:
        attempts = use_s3(proxy.url, max_attempts=2)
        client = storage._s3()

        def outage_before_samples(params, **_):
            if params.get("Key", "").endswith("samples.json"):
                proxy.down()

        client.meta.events.register("provide-client-params.s3.PutObject", outage_before_samples)
        output = f"s3://{BUCKET}/runs/r1/dataset"
        with pytest.raises(StorageError, match=f"could not write {output}/samples.json"):
            prepare_dataset(str(mnist_root), output)
        assert attempts.count == 1 + 2  # dataset.pt once, samples.json twice, dataset.json never

        keys = {o["Key"] for o in server.client().list_objects_v2(Bucket=BUCKET)["Contents"]}
        assert keys == {"runs/r1/dataset/dataset.pt"}  # the first artifact, but no manifest
        client.meta.events.unregister("provide-client-params.s3.PutObject", outage_before_samples)
        proxy.up()
        with pytest.raises(StorageError, match="dataset.json"):
            load_dataset(f"{output}/dataset.json")

        manifest = prepare_dataset(str(mnist_root), output)  # what Airflow's task retry does
        loaded, tensors = load_dataset(manifest["uri"])
        assert loaded == manifest and len(tensors["train_labels"]) == manifest["counts"]["train"]
    finally:
        proxy.down()
