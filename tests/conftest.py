"""Shared fixtures: tiny synthetic MNIST in real IDX files, an Airflow home on SQLite, an S3 server.

Airflow reads its configuration when first imported, so its environment is
set here, before any test module imports it.
"""

from __future__ import annotations

import gzip
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DAGS = REPO / "dags"

_AIRFLOW_HOME = tempfile.mkdtemp(prefix="airflow-home-")
os.environ["AIRFLOW_HOME"] = _AIRFLOW_HOME
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ.setdefault("KT_LOG_LEVEL", "INFO")
for _var in ("MNIST_BACKEND", "MNIST_STORAGE_ROOT", "MNIST_DATA_SOURCE", "MNIST_FAIL_AFTER_EPOCH"):
    os.environ.pop(_var, None)

IDX_FILES = {  # torchvision's file names -> (split, what)
    "train-images-idx3-ubyte": ("train", "images"),
    "train-labels-idx1-ubyte": ("train", "labels"),
    "t10k-images-idx3-ubyte": ("test", "images"),
    "t10k-labels-idx1-ubyte": ("test", "labels"),
}


def synthetic_digits(n: int, seed: int) -> tuple[bytes, bytes]:
    """n learnable 28x28 'digits': class k lights a 6x6 block at a k-dependent place, plus noise."""
    import random

    rng = random.Random(seed)
    labels = [i % 10 for i in range(n)]
    rng.shuffle(labels)
    pixels = bytearray()
    for label in labels:
        img = [[rng.randrange(0, 40) for _ in range(28)] for _ in range(28)]
        top, left = 3 + (label // 5) * 12, 1 + (label % 5) * 5
        for r in range(top, top + 6):
            for c in range(left, left + 5):
                img[r][c] = rng.randrange(180, 256)
        pixels += bytes(p for row in img for p in row)
    images = struct.pack(">IIII", 0x803, n, 28, 28) + bytes(pixels)
    return images, struct.pack(">II", 0x801, n) + bytes(labels)


def write_idx(folder: Path, train: int = 600, test: int = 200, gz: bool = False) -> dict[str, Path]:
    """Write the four IDX files into ``folder`` (gzipped if ``gz``); return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {"train": synthetic_digits(train, seed=1), "test": synthetic_digits(test, seed=2)}
    paths = {}
    for name, (split, what) in IDX_FILES.items():
        blob = data[split][0 if what == "images" else 1]
        path = folder / (name + ".gz" if gz else name)
        path.write_bytes(gzip.compress(blob) if gz else blob)
        paths[name] = path
    return paths


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
    """A torchvision dataset root (``MNIST/raw/*-ubyte``) of synthetic digits."""
    root = tmp_path_factory.mktemp("mnist-root")
    write_idx(root / "MNIST" / "raw")
    return root


@pytest.fixture(scope="session")
def dataset_uri(mnist_root, tmp_path_factory) -> str:
    """The synthetic digits preprocessed once into the pipeline's dataset artifact."""
    from kubetorch_example.data import prepare_dataset

    out = tmp_path_factory.mktemp("dataset")
    return prepare_dataset(str(mnist_root), str(out))["uri"]


@pytest.fixture(scope="session")
def airflow_db():
    """A fresh SQLite metadata database for the session (Airflow needs one even for dag.test)."""
    from airflow.utils import db

    db.resetdb()
    return _AIRFLOW_HOME


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout}s")


class S3Server:
    """moto's S3 API server on 127.0.0.1, stoppable and restartable on the same port."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self):
        cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.proc)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_server():
    server = S3Server()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """boto3 pointed at the loopback S3 server through AWS_ENDPOINT_URL, as a MinIO user would."""
    from kubetorch_example import storage

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")  # pragma: allowlist secret
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    storage._s3.cache_clear()
    yield s3_server
    storage._s3.cache_clear()


@pytest.fixture
def bucket(s3_env):
    """A fresh bucket on the loopback S3 server; yields its name."""
    import uuid

    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name
