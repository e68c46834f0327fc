"""Repository-wide safety checks: no secrets, no machine paths or registry hosts, safe torch.load."""

from __future__ import annotations

import ast
import re
import subprocess

import pytest

from conftest import REPO


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    return [f for f in out.splitlines() if (REPO / f).is_file()]


@pytest.fixture(scope="module")
def files() -> list[str]:
    return tracked_files()


def test_detect_secrets_finds_nothing(files, monkeypatch):
    from detect_secrets import SecretsCollection
    from detect_secrets.settings import default_settings

    monkeypatch.chdir(REPO)
    secrets = SecretsCollection()
    with default_settings():
        for name in files:  # one by one: scan_files forks a pool, which can deadlock beside Airflow's threads
            secrets.scan_file(name)
    assert secrets.json() == {}, "detect-secrets found something; remove it (or mark a false positive inline)"


def test_detect_secrets_would_catch_a_key(tmp_path, monkeypatch):
    from detect_secrets import SecretsCollection
    from detect_secrets.settings import default_settings

    leaked = tmp_path / "settings.py"
    leaked.write_text('aws_secret_access_key = "' + "wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + "EXAMPLEKEY" + '"\n')  # pragma: allowlist secret
    monkeypatch.chdir(tmp_path)
    secrets = SecretsCollection()
    with default_settings():
        secrets.scan_file("settings.py")
    assert secrets.json() != {}


# Built from parts so this file does not match itself.
MACHINE_PATHS = re.compile("|".join(["/" + "work/", "/" + "root/", "/tmp/" + "mnist", "shared/" + "data/"]))
REGISTRY_HOSTS = re.compile(r"\b(docker\.io|ghcr\.io|nvcr\.io|gcr\.io|quay\.io|[\w.-]+\.dkr\.ecr\.[\w.-]+)\b")


def test_no_paths_of_this_machine(files):
    hits = [f for f in files if MACHINE_PATHS.search((REPO / f).read_text(errors="ignore"))]
    # The tests locate the shared chart schema relative to the checkout, never by absolute path.
    hits = [f for f in hits if f != "tests/test_k8s_manifests.py"]
    assert hits == []


def test_no_registry_hostnames(files):
    checked = [f for f in files if not f.startswith("tests/")]  # tests name them to forbid them
    hits = {f: REGISTRY_HOSTS.search((REPO / f).read_text(errors="ignore"))[0] for f in checked
            if REGISTRY_HOSTS.search((REPO / f).read_text(errors="ignore"))}
    assert hits == {}


def _torch_loads(source: str) -> list[ast.Call]:
    return [node for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load"]


def test_every_torch_load_is_weights_only(files):
    calls = [(f, call) for f in files if f.endswith(".py") and f.startswith(("dags/", "benchmarks/"))
             for call in _torch_loads((REPO / f).read_text())]
    assert len(calls) >= 3, "expected the package's torch.load calls"
    unsafe = [(f, ast.unparse(call)) for f, call in calls
              if not any(k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in call.keywords)]
    assert unsafe == []
