"""Read and write artifacts by URI: a local folder or ``s3://bucket/key``.

No torch here: the Airflow side uses this module too.

* Local writes go to a temporary name in the same folder, then ``os.replace``:
  a reader sees the old object or the new one, never half of one.
* S3 writes are a single ``PutObject``, which S3 applies atomically. boto3 uses
  its standard credential chain (IRSA, instance roles, env) and honours
  ``AWS_ENDPOINT_URL`` for MinIO and other S3-compatible stores; transient
  errors are retried by botocore's "standard" retry mode with backoff, up to
  ``MNIST_S3_MAX_ATTEMPTS`` attempts in all (read when the client is built).
  Reads go through s3transfer, which also retries a connection that breaks
  mid-body (botocore's retries end once the response headers arrive).
* Every artifact has a sha256; ``read_verified`` refuses a mismatch.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")  # "s3:/b/k" is a typo, not a local folder named "s3:"
S3_MAX_ATTEMPTS_ENV = "MNIST_S3_MAX_ATTEMPTS"
S3_MAX_ATTEMPTS_DEFAULT = 10  # botocore 1.4x backs off 50 ms x 2^n, jittered: ~13 s in all on average, 25.5 s at most


class StorageError(RuntimeError):
    """An artifact could not be read or written; the message says which and why."""


class IntegrityError(StorageError):
    """An artifact's bytes do not match the sha256 recorded for it."""


@dataclass(frozen=True)
class Location:
    scheme: str  # "file" or "s3"
    bucket: str  # "" for local files
    path: str  # absolute local path, or the S3 key


def parse(uri: str) -> Location:
    """Split a URI into scheme, bucket and path, or raise ValueError saying what is wrong."""
    if not isinstance(uri, str) or not uri.strip():
        raise ValueError(f"storage URI must be a non-empty string (got {uri!r})")
    if uri.startswith("s3://"):
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not _S3_BUCKET.match(bucket):
            raise ValueError(
                f"malformed S3 URI {uri!r}: bucket {bucket!r} is not a valid bucket name; use s3://bucket/prefix"
            )
        return Location("s3", bucket, key.strip("/"))
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    elif "://" in uri or _SCHEME.match(uri):
        raise ValueError(f"unsupported storage URI {uri!r}: use a local folder, file:///path or s3://bucket/prefix")
    return Location("file", "", str(Path(uri).expanduser().absolute()))


def join(root: str, *parts: str) -> str:
    """``root`` with path parts appended, keeping its scheme."""
    tail = "/".join(p.strip("/") for p in parts if p)
    return f"{root.rstrip('/')}/{tail}" if tail else root


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@functools.lru_cache(maxsize=1)
def _s3():
    import boto3
    from botocore.config import Config

    # Standard mode retries throttling, 5xx and connection errors with
    # exponential backoff and jitter; no hand-rolled loop needed.
    # "total_max_attempts" counts the first try; botocore's "max_attempts" would not.
    attempts = int(os.environ.get(S3_MAX_ATTEMPTS_ENV) or S3_MAX_ATTEMPTS_DEFAULT)
    config = Config(
        retries={"mode": "standard", "total_max_attempts": max(1, attempts)},
        connect_timeout=5,
        read_timeout=60,
    )
    return boto3.client("s3", config=config)


def _s3_error(action: str, uri: str, exc: Exception) -> StorageError:
    return StorageError(f"could not {action} {uri}: {exc}")


def write_bytes(uri: str, data: bytes) -> str:
    """Write ``data`` at ``uri`` atomically; return its sha256."""
    loc = parse(uri)
    if loc.scheme == "s3":
        try:
            _s3().put_object(Bucket=loc.bucket, Key=loc.path, Body=data)
        except Exception as exc:  # botocore raises many types; all mean the same here
            raise _s3_error("write", uri, exc) from exc
    else:
        target = Path(loc.path)
        tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # Mode 0o666 lets the umask decide, as for any new file (mkstemp would force 0600).
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as exc:
            raise StorageError(f"could not write {uri}: {exc.strerror or exc}") from exc
        try:
            with open(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):  # disk full, quota, I/O error: the same error type as S3's
                raise StorageError(f"could not write {uri}: {exc.strerror or exc}") from exc
            raise
    return sha256(data)


def read_bytes(uri: str) -> bytes:
    loc = parse(uri)
    if loc.scheme == "s3":
        buffer = io.BytesIO()
        try:
            _s3().download_fileobj(loc.bucket, loc.path, buffer)
        except Exception as exc:
            raise _s3_error("read", uri, exc) from exc
        return buffer.getvalue()
    try:
        return Path(loc.path).read_bytes()
    except OSError as exc:
        raise StorageError(f"could not read {uri}: {exc.strerror}") from exc


def exists(uri: str) -> bool:
    loc = parse(uri)
    if loc.scheme == "file":
        return Path(loc.path).is_file()
    from botocore.exceptions import ClientError

    try:
        _s3().head_object(Bucket=loc.bucket, Key=loc.path)
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise _s3_error("look up", uri, exc) from exc
    except Exception as exc:  # endpoint unreachable, timeouts: not an answer to "does it exist?"
        raise _s3_error("look up", uri, exc) from exc


def check_writable(root: str) -> None:
    """Fail fast (before any compute) if artifacts cannot be written under ``root``."""
    loc = parse(root)
    if loc.scheme == "file":
        path = Path(loc.path)
        existing = next((p for p in (path, *path.parents) if p.exists()), None)
        if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK):
            raise StorageError(f"storage root {root!r} is not a writable folder; set MNIST_STORAGE_ROOT to one")
        return
    try:
        _s3().head_bucket(Bucket=loc.bucket)
    except Exception as exc:
        raise StorageError(
            f"storage root {root!r}: bucket {loc.bucket!r} does not exist or is not reachable ({exc}). "
            "Create the bucket, check credentials and AWS_ENDPOINT_URL, or set MNIST_STORAGE_ROOT."
        ) from exc


def write_json(uri: str, obj: Any) -> str:
    return write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True).encode())


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def read_verified(uri: str, expected_sha256: str) -> bytes:
    """Read an artifact and refuse it if its sha256 differs from the manifest's."""
    data = read_bytes(uri)
    actual = sha256(data)
    if actual != expected_sha256:
        raise IntegrityError(
            f"artifact {uri} failed its integrity check: sha256 {actual} != {expected_sha256} recorded "
            f"in its manifest ({len(data)} bytes read). It is corrupt or was replaced; rerun the step that wrote it."
        )
    return data


def write_artifact(uri: str, data: bytes) -> dict:
    """Write an artifact; return the manifest entry (uri, sha256, bytes) that readers verify against."""
    return {"uri": uri, "sha256": write_bytes(uri, data), "bytes": len(data)}


def read_artifact(entry: dict) -> bytes:
    """Read an artifact described by a manifest entry from ``write_artifact``."""
    return read_verified(entry["uri"], entry["sha256"])
