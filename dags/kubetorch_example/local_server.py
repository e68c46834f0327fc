"""Run a class from this package behind kubetorch's own HTTP server, exactly as a pod does.

A kubetorch pod runs ``kubetorch.serving.http_server:app`` (FastAPI, under
uvicorn). Outside Kubernetes that server reads what to serve from environment
variables instead of from the kubetorch controller, so the very server the
pods run can serve ``SimpleTrainer`` or ``MnistClassifier`` on this machine:
no cluster, no Docker. The server executes the class in a spawned subprocess
(its ``ExecutionSupervisor``), just as in a pod; calls travel as HTTP + JSON.

    with LocalServer("kubetorch_example.inference", "MnistClassifier", {"model": entry}) as server:
        classifier = server.connect()          # a real kubetorch ``Cls`` handle
        classifier.predict(images)             # POST /MnistClassifier/predict

Used by ``serve.py`` and by the tests. Needs ``kubetorch[server]==0.5.1``
(FastAPI, uvicorn) in this environment. No torch is imported here; the class's
own imports run in the server's subprocess.

Pinned to kubetorch 0.5.1. What this module relies on, checked against the
0.5.1 source (paths inside ``site-packages/kubetorch/``):

Server side (the environment contract of ``serving/http_server.py``):

* ``KT_FILE_PATH``, ``KT_MODULE_NAME``, ``KT_CLS_OR_FN_NAME``, ``KT_INIT_ARGS``
  are read by ``load_callable_from_env`` (http_server.py:1039-1094) and
  ``load_supervisor`` (http_server.py:971-975); ``KT_CLS_OR_FN_NAME`` is also the
  first path segment the call route accepts (http_server.py:1720-1750).
* With ``KT_MODULE_NAME``/``KT_CLS_OR_FN_NAME`` set, or outside Kubernetes,
  ``ControllerWebSocket.start`` does not wait for a controller
  (http_server.py:470-486).
* ``KT_LOG_STREAMING_ENABLED`` / ``KT_METRICS_ENABLED`` = false keep the
  server from pushing logs and metrics to a controller (http_server.py:89-90,
  1258-1278). ``KT_ALLOWED_SERIALIZATION=json`` refuses pickle
  (http_server.py:1777). ``POD_NAME``/``POD_IP`` stop it guessing them from
  the hostname (http_server.py:185-200); the pod name comes back in errors.
* ``KT_LAUNCH_ID``: a fresh id per server; ``GET /ready?launch_id=<id>``
  answers 200 only from the server that has it (http_server.py:1670-1697), as
  kubetorch's own client checks after a deploy (module.py:1480-1512). So a
  server already listening on the port cannot pass for this one.
* ``KT_FREEZE=True`` makes ``run_image_setup`` a no-op even when this process
  runs inside some Kubernetes pod (a CI runner), so it never tries to rsync
  code from a controller (http_server.py:824).

Client side (private hooks of the client, the reason for the version pin):

* ``Module.service_config`` (resources/callables/module.py:285-292): any
  non-None value makes ``Module._client`` skip ``Module.from_name``, the
  controller lookup (module.py:460).
* ``kt.Compute(endpoint=kt.Endpoint(url=...))``: ``Module.base_endpoint``
  returns that URL (module.py:295-305, compute/endpoint.py:87-111), but first
  calls ``Compute.client_port()`` -> ``globals.service_url()``
  (compute.py:1922-1925, globals.py:302-330), which starts
  ``kubectl port-forward`` unless ``kt.config.api_url`` (``KT_API_URL``) is
  set. Only its port is parsed, and nothing is sent to it once log and metrics
  streaming are off, so while a handle from here is in use ``api_url`` is set
  to the server's loopback URL if it was unset.
* Metrics streaming (a thread per call, http_client.py:320-345) is driven by
  the process-wide ``kt.config.stream_metrics``; it is set to False while a
  handle is in use. Log streaming is turned off per handle with
  ``LoggingConfig(stream_logs=False)`` on its compute (module.py:348-358).
  ``LocalServer`` restores both settings when the last server stops.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
import warnings
import weakref
from pathlib import Path
from typing import IO, Any, Iterator

from kubetorch_example import CODE_ROOT  # the server imports the class from here, as a pod does

KUBETORCH_VERSION = "0.5.1"  # the version whose private hooks this module uses
SERVER_APP = "kubetorch.serving.http_server:app"
DEFAULT_HOST = "127.0.0.1"
STARTUP_TIMEOUT = 60.0  # seconds for the server to answer GET /health and /ready
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class ServerError(RuntimeError):
    """The local kubetorch server did not start or exited; the message carries its log tail."""


def kubetorch_version() -> str | None:
    """The installed kubetorch version, read without importing kubetorch."""
    from importlib import metadata

    try:
        return metadata.version("kubetorch")
    except metadata.PackageNotFoundError:
        return None


def _check_server_installed() -> None:
    missing = [name for name in ("kubetorch", "fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise ServerError(
            f"cannot run kubetorch's HTTP server here: {', '.join(missing)} not installed. "
            f"Install it with: pip install 'kubetorch[server]=={KUBETORCH_VERSION}'"
        )
    version = kubetorch_version()
    if version != KUBETORCH_VERSION:
        warnings.warn(
            f"kubetorch {version} is installed; local_server was written against {KUBETORCH_VERSION} "
            "and the server's environment contract may have changed",
            stacklevel=3,
        )


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port that was free on ``host`` a moment ago (the OS picks it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _url_host(host: str) -> str:
    """The host to put in a URL: the wildcard addresses are reached through loopback."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def bind_error(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound now (as uvicorn binds it, with SO_REUSEADDR), or None if it can."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def server_env(module: str, name: str, init_args: dict | None, service_name: str, host: str,
               launch_id: str) -> dict[str, str]:
    """The environment variables that make kubetorch's server load ``module.name`` as a pod would."""
    return {
        "KT_FILE_PATH": str(CODE_ROOT),
        "KT_MODULE_NAME": module,
        "KT_CLS_OR_FN_NAME": name,
        "KT_INIT_ARGS": json.dumps(init_args) if init_args else "null",
        "KT_SERVICE_NAME": service_name,
        "POD_NAME": f"{service_name}-local",
        "POD_IP": "127.0.0.1" if host in ("0.0.0.0", "") else host,
        "KT_LOG_STREAMING_ENABLED": "false",
        "KT_METRICS_ENABLED": "false",
        "KT_ALLOWED_SERIALIZATION": "json",
        "KT_FREEZE": "True",
        "KT_LAUNCH_ID": launch_id,
    }


# --------------------------------------------------------------------- client


_client_lock = threading.Lock()
_client_holds = 0
_client_saved: tuple[Any, Any] | None = None


def _hold_client_config(url: str) -> None:
    """Point kubetorch's process-wide client settings at loopback (see the module docstring)."""
    global _client_holds, _client_saved
    import kubetorch as kt

    with _client_lock:
        if _client_holds == 0:
            _client_saved = (kt.config.api_url, kt.config.stream_metrics)
            if not kt.config.api_url:
                kt.config.api_url = url
            kt.config.stream_metrics = False  # the setter only contacts a cluster for True
        _client_holds += 1


def _release_client_config() -> None:
    global _client_holds, _client_saved
    import kubetorch as kt

    with _client_lock:
        if _client_holds == 0:
            return
        _client_holds -= 1
        if _client_holds == 0 and _client_saved is not None:
            api_url, stream_metrics = _client_saved
            kt.config.api_url = api_url
            # None makes the next read fall back to KT_STREAM_METRICS / ~/.kt/config.yaml (default True);
            # setting True would make the setter ask a cluster whether Prometheus is installed.
            kt.config.stream_metrics = False if stream_metrics is False else None
            _client_saved = None


def _check_client_version() -> None:
    import kubetorch as kt

    if kt.__version__ != KUBETORCH_VERSION:
        raise RuntimeError(
            f"kubetorch {kt.__version__} is installed, but local_server.connect() uses private hooks of "
            f"kubetorch {KUBETORCH_VERSION} (Module.service_config, Compute.client_port); "
            f"pip install 'kubetorch=={KUBETORCH_VERSION}' or re-check them against the new source"
        )


def _build_handle(url: str, module: str, name: str, init_args: dict | None, service_name: str):
    import kubetorch as kt

    # Pointers, not the class: the caller needs neither torch nor the class's imports.
    remote = kt.Cls(name=service_name, pointers=(str(CODE_ROOT), module, name), init_args=init_args)
    remote.service_name = service_name  # no username prefix
    remote.compute = kt.Compute(
        cpus="0.1",
        namespace="default",  # explicit: the default would run `kubectl config view`
        endpoint=kt.Endpoint(url=url),
        logging_config=kt.LoggingConfig(stream_logs=False),
    )
    # Private hook: any non-None service_config stops _client() from asking a controller for the service.
    remote.service_config = {"endpoint": url, "local": True}
    return remote


def connect(url: str, module: str, name: str, init_args: dict | None = None, service_name: str | None = None):
    """A kubetorch ``Cls`` handle whose method calls go to a kubetorch server at ``url``.

    ``handle.method(*args, **kwargs)`` is a POST to ``{url}/{name}/{method}``
    with JSON ``{"args": [...], "kwargs": {...}}``; a remote exception comes
    back as a subclass of its own type (``except ValueError`` works) with
    ``.remote_traceback`` and ``.pod_name``.

    For the lifetime of this process, ``kt.config.api_url`` is set to ``url``
    if it was unset and metrics streaming is turned off (see the module
    docstring): use ``LocalServer.connect`` to have them restored.
    """
    _check_client_version()
    _hold_client_config(url)
    return _build_handle(url, module, name, init_args, service_name or _default_service_name(name))


def _default_service_name(name: str) -> str:
    return f"local-{name.lower()}"


# --------------------------------------------------------------------- server


_started: "weakref.WeakSet[LocalServer]" = weakref.WeakSet()


@atexit.register
def _stop_forgotten_servers() -> None:
    """A server left running when this process exits would keep its port (and a GPU) busy."""
    for server in list(_started):
        server.stop()


class LocalServer:
    """kubetorch's HTTP server serving one class of this package, in a subprocess.

    Args:
        module: dotted module name, e.g. ``"kubetorch_example.trainer"``.
        name: the class in it, e.g. ``"SimpleTrainer"``.
        init_args: keyword arguments for the class's ``__init__`` (JSON-serializable).
        host: interface to bind (default 127.0.0.1). The server has no
            authentication: anyone who can reach the port can call every method.
        port: TCP port (default: a free one).
        service_name: reported by the server and in errors (default ``local-<class>``).
        log: where the server's stdout and stderr go: None (default) captures
            them in a temporary file whose tail goes into startup errors; or an
            open file, e.g. ``sys.stderr`` to see them live.
        startup_timeout: seconds to wait for ``GET /health`` and ``GET /ready?launch_id=...``.
    """

    def __init__(self, module: str, name: str, init_args: dict | None = None, *, host: str = DEFAULT_HOST,
                 port: int | None = None, service_name: str | None = None, log: IO | None = None,
                 startup_timeout: float = STARTUP_TIMEOUT):
        json.dumps(init_args)  # fail here, not in the subprocess, if init_args is not JSON
        self.module, self.name, self.init_args = module, name, init_args
        self.host = host
        self.port = port or free_port(host if host not in ("0.0.0.0", "::", "") else DEFAULT_HOST)
        self.service_name = service_name or _default_service_name(name)
        self.startup_timeout = startup_timeout
        self._log = log
        self._log_file: IO | None = None
        self.proc: subprocess.Popen | None = None
        self.launch_id = uuid.uuid4().hex
        self._holds = 0

    @classmethod
    def for_target(cls, target: Any, init_args: dict | None = None, **kwargs) -> "LocalServer":
        """From a ``backends.Target`` (e.g. ``backends.TRAINER``)."""
        return cls(target.module, target.name, init_args, **kwargs)

    @property
    def url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "uvicorn", SERVER_APP, "--host", self.host, "--port", str(self.port)]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(server_env(self.module, self.name, self.init_args, self.service_name, self.host, self.launch_id))
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self) -> "LocalServer":
        """Start the server and wait until it answers ``GET /health`` and ``/ready``; raise ServerError otherwise."""
        if self.running:
            return self
        _check_server_installed()
        problem = bind_error(self.host, self.port)
        if problem:
            raise ServerError(f"cannot serve {self.name} on {self.host}:{self.port}: {problem}")
        if self._log is None:
            self._log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
                mode="w+b", prefix=f"kt-{self.service_name}-", suffix=".log", delete=False
            )
            out = self._log_file
        else:
            out = self._log
        self.proc = subprocess.Popen(
            self.command(), env=self.env(), cwd=str(CODE_ROOT), stdin=subprocess.DEVNULL,
            stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() can end the worker it spawns too
        )
        _started.add(self)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _get_json(self, path: str) -> dict | None:
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=2) as response:
                return json.load(response) if response.status == 200 else None
        except (OSError, ValueError):
            return None  # not listening yet, or 503 while loading

    def _answers(self) -> bool:
        """GET /health, then /ready for this server's launch id (what kubetorch's client checks after a deploy)."""
        health = self._get_json("/health")
        if not health or health.get("status") != "healthy":
            return False
        ready = self._get_json(f"/ready?launch_id={self.launch_id}")
        return bool(ready) and ready.get("launch_id") == self.launch_id and ready.get("callable") == self.name

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                raise ServerError(f"kubetorch server for {self.module}.{self.name} exited with code {code} "
                                  f"before answering GET /health.{self._tail_text()}")
            if self._answers():
                return
            if time.monotonic() > deadline:
                raise ServerError(f"kubetorch server for {self.module}.{self.name} did not answer GET "
                                  f"{self.url}/health and /ready within {self.startup_timeout:g}s."
                                  f"{self._tail_text()}")
            time.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines the server wrote (only when its output is captured)."""
        if self._log_file is None:
            return ""
        try:
            text = Path(self._log_file.name).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _tail_text(self) -> str:
        tail = self.log_tail()
        return f"\nLast lines of the server's output:\n{tail}" if tail else ""

    def connect(self):
        """A kubetorch ``Cls`` handle for this server (see ``connect``); settings are restored by ``stop``."""
        if not self.running:
            raise ServerError(f"the server for {self.name} is not running; call start() first")
        _check_client_version()
        _hold_client_config(self.url)
        self._holds += 1
        return _build_handle(self.url, self.module, self.name, self.init_args, self.service_name)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server and the worker process it spawned. Safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()  # uvicorn shuts down; kubetorch's handler stops its worker process
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group this server started
        while self._holds:
            self._holds -= 1
            _release_client_config()
        if self._log_file is not None:
            self._log_file.close()
            Path(self._log_file.name).unlink(missing_ok=True)
            self._log_file = None

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"LocalServer({self.module}.{self.name} at {self.url}, {state})"


@contextlib.contextmanager
def serving(module: str, name: str, init_args: dict | None = None, **kwargs) -> Iterator[tuple[LocalServer, Any]]:
    """Start a server, yield ``(server, handle)``, stop it afterwards. For tests and scripts."""
    with LocalServer(module, name, init_args, **kwargs) as server:
        yield server, server.connect()
