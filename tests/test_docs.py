"""The docs are part of the product: GUIDE.md quotes the source, and every command in the docs works.

Commands are taken from the ```bash blocks of README.md and GUIDE.md. The cheap
ones run here; those that need a cluster or a Docker engine are checked as far
as this machine can (the files they name exist, make targets exist). A command
of a kind this file does not know fails the test, so a new one gets a check.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

DOCS = ("README.md", "GUIDE.md")
CLUSTER_TOOLS = {"docker", "helm", "kubectl"}


def bash_commands(doc: str) -> list[str]:
    """Command lines of the doc's ```bash blocks (continuations joined; output lines skipped)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", (REPO / doc).read_text(), re.DOTALL):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith(("{", "#")):
                commands.append(line)
    return commands


ALL = [(doc, cmd) for doc in DOCS for cmd in bash_commands(doc)]


def _run(args: list[str], env: dict, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def env(tmp_path) -> dict:
    return {**os.environ, "MNIST_STORAGE_ROOT": str(tmp_path / "artifacts"), "PYTHONPATH": str(REPO / "dags")}


def test_the_docs_have_commands():
    assert len(ALL) >= 10
    assert ("README.md", "make demo") in ALL and ("README.md", "make test") in ALL


@pytest.mark.parametrize("doc, command", ALL, ids=[f"{d}:{c[:60]}" for d, c in ALL])
def test_every_documented_command_works(doc, command, env):
    words = shlex.split(command.split("|")[0])
    tool = words[0]
    if tool == "make":
        result = _run(["make", "-n", *words[1:]], env)  # -n: the target exists and its recipe expands
        assert result.returncode == 0, result.stderr
    elif tool.endswith("python") and words[1:3] == ["-m", "kubetorch_example.tasks"]:
        args = words[3:] if "--help" in words else [*words[3:], "--dry-run"]  # validate, compute nothing
        result = _run([sys.executable, "-m", "kubetorch_example.tasks", *args], env)
        assert result.returncode == 0, result.stderr
    elif tool.endswith("python") and words[1:3] == ["-m", "kubetorch_example.serve"]:
        result = _run([sys.executable, "-m", "kubetorch_example.serve", *words[3:], "--help"], env)
        assert result.returncode == 0 and "--model" in result.stdout, result.stderr
    elif tool == "python3" and "curl" in command:
        # Needs a running server; tests/test_kubetorch_server.py drives the same route.
        assert "/MnistClassifier/predict" in command
    elif tool in CLUSTER_TOOLS:
        for flag, value in zip(words, words[1:]):
            if flag == "-f" and not value.startswith("http"):
                assert (REPO / value).is_file(), f"{command}: {value} does not exist"
        if tool == "docker" and words[1] == "build":
            assert words[-1] == "." and (REPO / ".dockerignore").is_file()
    else:
        pytest.fail(f"{doc}: no check for command {command!r}; add one to {Path(__file__).name}")


def test_the_guide_quotes_the_source_verbatim():
    result = _run([sys.executable, "scripts/sync_guide.py", "--check"], dict(os.environ))
    assert result.returncode == 0, result.stderr


def test_a_stale_guide_block_is_caught(tmp_path):
    guide = (REPO / "GUIDE.md").read_text()
    assert "class SimpleNN(nn.Module):" in guide
    stale = tmp_path / "GUIDE.md"
    stale.write_text(guide.replace("self.fc2 = nn.Linear(128, 64)", "self.fc2 = nn.Linear(128, 32)"))
    result = _run([sys.executable, "scripts/sync_guide.py", "--check", "--guide", str(stale)], dict(os.environ))
    assert result.returncode == 1
    assert "dags/kubetorch_example/model.py#model" in result.stderr


def test_every_python_block_in_the_guide_is_quoted_from_the_source():
    guide = (REPO / "GUIDE.md").read_text()
    blocks = len(re.findall(r"```python\n", guide))
    quoted = len(re.findall(r"<!-- snippet: [^ ]+ -->\n```python\n", guide))
    assert blocks == quoted >= 10
