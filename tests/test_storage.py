"""storage: artifacts by URI, on a local folder and on S3.

S3 is moto's real S3 API server on 127.0.0.1, reached the way a MinIO user
configures boto3: through ``AWS_ENDPOINT_URL`` (the ``s3_env`` fixture). No
part of storage or boto3 is mocked. Local write failures are real too: a
file-size limit (RLIMIT_FSIZE, which binds root as well) makes the kernel stop
a write half-way, and a directory in the target's place makes the final rename
fail.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kubetorch_example import storage
from kubetorch_example.storage import Location, StorageError

BLOB = bytes(range(256)) * 64  # every byte value, 16 KiB


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    """A fresh storage root: a local folder, or a prefix in a fresh bucket on the loopback S3 server."""
    if request.param == "local":
        return str(tmp_path / "store")
    return f"s3://{request.getfixturevalue('bucket')}/store"


def _leftovers(folder: Path) -> list[str]:
    """Temporary files ``write_bytes`` may have left in ``folder`` (it names them ``.<target>.*.tmp``)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp"))


# --- round trips ---------------------------------------------------------------------------------


def test_bytes_round_trip_and_overwrite(root):
    uri = storage.join(root, "a", "b", "blob.bin")
    assert storage.write_bytes(uri, BLOB) == storage.sha256(BLOB)
    assert storage.read_bytes(uri) == BLOB
    assert storage.write_bytes(uri, b"second") == storage.sha256(b"second")
    assert storage.read_bytes(uri) == b"second"
    empty = storage.join(root, "empty.bin")
    storage.write_bytes(empty, b"")
    assert storage.read_bytes(empty) == b""


def test_json_round_trip(root):
    obj = {"b": [1, 2.5, None, True], "a": {"nested": "ünïcode"}, "n": 0}
    uri = storage.join(root, "manifest.json")
    storage.write_json(uri, obj)
    assert storage.read_json(uri) == obj
    text = storage.read_bytes(uri).decode()
    assert json.loads(text) == obj and text.index('"a"') < text.index('"b"')  # sorted keys: stable bytes


def test_exists(root):
    uri = storage.join(root, "dir", "thing.json")
    assert not storage.exists(uri)
    storage.write_json(uri, {})
    assert storage.exists(uri)
    assert not storage.exists(storage.join(root, "dir"))  # a folder / key prefix is not an artifact
    assert not storage.exists(storage.join(root, "dir", "thing.js"))


def test_read_missing_names_the_uri(root):
    uri = storage.join(root, "nothing", "here.bin")
    with pytest.raises(StorageError, match="nothing/here.bin"):
        storage.read_bytes(uri)


def test_s3_objects_land_where_the_uri_says(bucket):
    """The key is the URI's path, so other tools (aws s3 ls, mc) find the artifacts."""
    import boto3

    storage.write_bytes(f"s3://{bucket}/runs/r1/model.pt", b"weights")
    body = boto3.client("s3").get_object(Bucket=bucket, Key="runs/r1/model.pt")["Body"].read()
    assert body == b"weights"


def test_client_uses_aws_endpoint_url(s3_env):
    """boto3 honours AWS_ENDPOINT_URL (MinIO's usual setup) and the retry settings storage configures."""
    client = storage._s3()
    assert client.meta.endpoint_url == s3_env.url
    assert client.meta.config.retries["mode"] == "standard"


def test_per_run_prefixes_do_not_collide(root):
    """Two DAG runs writing the same relative artifact under their own run prefix keep both."""
    from kubetorch_example.config import RunConfig, Settings
    from kubetorch_example.tasks import Run

    settings = Settings(storage_root=root)
    run_ids = ["manual__2025-06-01T12:00:00+00:00", "scheduled__2025-06-01T12:00:00+00:00",
               "manual__2025-06-01T12:00:00.123456+00:00"]
    runs = [Run(RunConfig(), settings, run_id) for run_id in run_ids]
    assert len({run.prefix for run in runs}) == len(runs)
    for run in runs:
        assert run.prefix.startswith(root.rstrip("/") + "/")
        storage.write_json(run.uri("model", "model.json"), {"run": run.run_id})
    for run in runs:
        assert storage.read_json(run.uri("model", "model.json")) == {"run": run.run_id}


# --- join and parse ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "root, parts, expected",
    [
        ("s3://bkt/prefix", ("a", "b.pt"), "s3://bkt/prefix/a/b.pt"),
        ("s3://bkt/prefix/", ("/a/", "/b.pt"), "s3://bkt/prefix/a/b.pt"),
        ("s3://bkt", ("x.json",), "s3://bkt/x.json"),
        ("/data/art", ("run", "m.pt"), "/data/art/run/m.pt"),
        ("file:///data/art/", ("m.pt",), "file:///data/art/m.pt"),
        ("/data/art", (), "/data/art"),
        ("/data/art", ("", "m.pt"), "/data/art/m.pt"),
    ],
)
def test_join(root, parts, expected):
    assert storage.join(root, *parts) == expected


def test_parse_good_uris(tmp_path, monkeypatch):
    assert storage.parse("s3://my-bucket/a/b/") == Location("s3", "my-bucket", "a/b")
    assert storage.parse("s3://my.bucket.v2/x") == Location("s3", "my.bucket.v2", "x")
    assert storage.parse("s3://bkt") == Location("s3", "bkt", "")
    assert storage.parse("file:///srv/art") == Location("file", "", "/srv/art")
    assert storage.parse(str(tmp_path / "x")) == Location("file", "", str(tmp_path / "x"))
    monkeypatch.chdir(tmp_path)
    assert storage.parse("artifacts/run") == Location("file", "", str(tmp_path / "artifacts" / "run"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert storage.parse("~/art") == Location("file", "", str(tmp_path / "art"))


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "   ",
        "s3://",
        "s3:///key",
        "s3://ab/key",  # too short
        "s3://My_Bucket/key",  # upper case and underscore
        "s3://-bucket/key",
        "s3://bucket-/key",
        "s3://" + "b" * 64 + "/key",  # too long
        "gs://bucket/key",
        "https://bucket.s3.amazonaws.com/key",
        "S3://bucket/key",
        "hdfs:///data",
        "s3:/bucket/key",  # typos of s3://, not local folders named "s3:"
        "s3:bucket/key",
    ],
)
def test_parse_refuses_malformed_uris_naming_them(uri):
    with pytest.raises(ValueError) as info:
        storage.parse(uri)
    assert repr(uri) in str(info.value)


@pytest.mark.parametrize("value", [None, 3, b"s3://bkt/x"])
def test_parse_refuses_non_strings(value):
    with pytest.raises(ValueError, match="non-empty string"):
        storage.parse(value)


def test_every_entry_point_validates_the_uri():
    for call in (storage.read_bytes, storage.exists, storage.check_writable, storage.read_json):
        with pytest.raises(ValueError, match="gs://bkt/x"):
            call("gs://bkt/x")
    with pytest.raises(ValueError, match="gs://bkt/x"):
        storage.write_bytes("gs://bkt/x", b"")


# --- check_writable ------------------------------------------------------------------------------


def test_check_writable_local(tmp_path):
    storage.check_writable(str(tmp_path))
    storage.check_writable(str(tmp_path / "not" / "yet" / "there"))  # created on first write
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(StorageError, match="not a writable folder"):
        storage.check_writable(str(a_file / "sub"))


def test_check_writable_existing_bucket(bucket):
    storage.check_writable(f"s3://{bucket}/mnist")
    storage.check_writable(f"s3://{bucket}")


def test_check_writable_missing_bucket_names_it(s3_env):
    with pytest.raises(StorageError) as info:
        storage.check_writable("s3://no-such-bucket-here/mnist")
    message = str(info.value)
    assert "'no-such-bucket-here'" in message and "does not exist" in message
    assert "AWS_ENDPOINT_URL" in message  # says what to check


# --- local atomic writes ------------------------------------------------------------------------


def test_local_write_leaves_no_temporary_files(tmp_path):
    for i in range(5):
        storage.write_bytes(str(tmp_path / "m.pt"), BLOB * i)
        storage.write_json(str(tmp_path / "m.json"), {"i": i})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.pt"]
    assert (tmp_path / "m.pt").read_bytes() == BLOB * 4


def test_local_write_respects_umask(tmp_path):
    """Artifacts get the permissions any new file would (not mkstemp's private 0600): other users can read them."""
    old = os.umask(0o022)
    try:
        storage.write_bytes(str(tmp_path / "m.pt"), b"x")
        (tmp_path / "plain").write_bytes(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.pt").stat().st_mode) == stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    assert stat.S_IMODE((tmp_path / "m.pt").stat().st_mode) == 0o644


def test_local_write_under_a_file_names_the_uri(tmp_path):
    (tmp_path / "file").write_text("x")
    uri = str(tmp_path / "file" / "m.pt")
    with pytest.raises(StorageError, match="file/m.pt"):
        storage.write_bytes(uri, b"x")


def test_local_readers_see_old_or_new_never_part(tmp_path):
    """While one thread rewrites an artifact, a reader always gets one whole version."""
    uri = str(tmp_path / "m.pt")
    versions = [b"A" * (1 << 18), b"B" * (1 << 19)]
    storage.write_bytes(uri, versions[0])
    done = threading.Event()

    def writer():
        for i in range(60):
            storage.write_bytes(uri, versions[i % 2])
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    while not done.is_set():
        assert storage.read_bytes(uri) in versions
        reads += 1
    thread.join(timeout=30)
    assert reads > 0 and _leftovers(tmp_path) == []


_FSIZE_WRITER = r"""
import resource, signal, sys
from kubetorch_example import storage
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write(2) instead of being killed
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
try:
    storage.write_bytes(sys.argv[1], b"N" * (1 << 20))
except Exception as exc:
    cause = exc if isinstance(exc, OSError) else exc.__cause__
    print(type(exc).__name__, getattr(cause, "errno", None), exc)
    sys.exit(3)
"""


def test_local_write_failing_half_way_keeps_the_old_object(tmp_path):
    """The kernel stops the write at 64 KiB of 1 MiB (RLIMIT_FSIZE, as a full disk would): old artifact intact."""
    target = tmp_path / "model.pt"
    storage.write_bytes(str(target), b"old model")
    proc = subprocess.run([sys.executable, "-c", _FSIZE_WRITER, str(target)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    kind, code, message = proc.stdout.split(" ", 2)
    assert int(code) == errno.EFBIG, proc.stdout
    assert kind == "StorageError" and str(target) in message, proc.stdout  # same error type as S3 failures
    assert target.read_bytes() == b"old model"
    assert _leftovers(tmp_path) == []


def test_local_write_failing_at_the_rename_cleans_up(tmp_path):
    """A folder where the artifact should be: the temp file is written in full, the rename fails, nothing remains."""
    target = tmp_path / "model.pt"
    target.mkdir()
    (target / "keep").write_text("untouched")
    with pytest.raises(StorageError, match="model.pt") as info:
        storage.write_bytes(str(target), BLOB)
    assert isinstance(info.value.__cause__, OSError)
    assert (target / "keep").read_text() == "untouched"
    assert _leftovers(tmp_path) == []


def test_run_ids_that_differ_only_in_awkward_characters_get_different_prefixes():
    from kubetorch_example.config import RunConfig, Settings
    from kubetorch_example.tasks import Run

    prefixes = {Run(RunConfig(), Settings(storage_root="s3://b/p"), rid).prefix for rid in ("a:b", "a_b", "a b")}
    assert len(prefixes) == 3
    assert Run(RunConfig(), Settings(storage_root="s3://b/p"), "cli-1").prefix == "s3://b/p/mnist_training_pipeline/cli-1"
