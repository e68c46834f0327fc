"""Where MNIST comes from, checked before any compute starts (no torch here).

``data_source`` is one of:

* ``"download"``: torchvision downloads from its usual mirrors and checks md5s.
* the URI of a mirror folder (local or ``s3://``) holding the four original
  ``.gz`` files: for air-gapped clusters. Each file is checked against the md5
  that torchvision itself uses.
* a local torchvision dataset root (a folder with ``MNIST/raw/*-ubyte``, what
  torchvision leaves after a download): used as it is, e.g. a cache or your
  own IDX files in MNIST's format.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from kubetorch_example import storage
from kubetorch_example.config import DOWNLOAD, ConfigError

# The md5 sums torchvision.datasets.MNIST.resources lists (tests check they agree).
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",  # pragma: allowlist secret (a public md5)
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",  # pragma: allowlist secret (a public md5)
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",  # pragma: allowlist secret (a public md5)
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",  # pragma: allowlist secret (a public md5)
}
RAW_FILES = tuple(name[: -len(".gz")] for name in MNIST_MD5)


def source_kind(data_source: str) -> str:
    """'download', 'root' (a torchvision dataset root) or 'mirror'."""
    if data_source == DOWNLOAD:
        return "download"
    loc = _parse(data_source)
    if loc.scheme == "file" and (Path(loc.path) / "MNIST" / "raw").is_dir():
        return "root"
    return "mirror"


def _parse(data_source: str) -> storage.Location:
    try:
        return storage.parse(data_source)
    except ValueError as exc:
        raise ConfigError(f"data_source: {exc}") from exc


def read_mirror(data_source: str) -> dict[str, bytes]:
    """The four ``.gz`` files of a mirror, each verified against torchvision's md5."""
    files, missing, reason = {}, [], ""
    for name in MNIST_MD5:
        try:
            files[name] = storage.read_bytes(storage.join(data_source, name))
        except storage.StorageError as exc:
            missing.append(name)
            reason = reason or str(exc)
    if missing:
        raise ConfigError(
            f"data_source {data_source!r} is not a usable MNIST mirror: cannot read {', '.join(missing)} "
            f"({reason}). It must hold the four original MNIST .gz files; or use data_source='download'."
        )
    for name, data in files.items():
        actual = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if actual != MNIST_MD5[name]:
            raise ConfigError(
                f"data_source {data_source!r}: {name} fails its checksum (md5 {actual}, expected {MNIST_MD5[name]}). "
                "The file is corrupt or not the original MNIST; replace it with the original."
            )
    return files


def check_source(data_source: str, backend: str) -> str:
    """Raise ConfigError unless ``data_source`` can be used by ``backend``; return its kind."""
    kind = source_kind(data_source)
    if backend == "kubernetes" and kind != "download" and _parse(data_source).scheme == "file":
        raise ConfigError(
            f"data_source {data_source!r} is a folder on this machine, which the pods cannot see. "
            "Upload the mirror to s3://... and pass that URI, or use data_source='download'."
        )
    if kind == "root":
        missing = [f for f in RAW_FILES if not (Path(_parse(data_source).path) / "MNIST" / "raw" / f).is_file()]
        if missing:
            raise ConfigError(f"data_source {data_source!r}: MNIST/raw lacks {', '.join(missing)}")
    elif kind == "mirror":
        read_mirror(data_source)
    return kind
