"""SimpleTrainer and MnistClassifier behind kubetorch's real HTTP server, called through kubetorch's client.

Each class runs in ``kubetorch.serving.http_server`` under uvicorn on
127.0.0.1, started with the environment a pod gets (``local_server``), and is
driven through a real ``kt.Cls`` handle: HTTP + JSON both ways, user code in
the server's worker process, remote exceptions rebuilt on this side. One
server per class for the whole module.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import kubetorch as kt
import pytest

from kubetorch_example import inference, local_server, storage
from kubetorch_example.backends import CLASSIFIER, TRAINER
from kubetorch_example.local_server import LocalServer, ServerError

REPO = Path(__file__).resolve().parent.parent
HYPERPARAMETERS = {"epochs": 1, "batch_size": 64, "learning_rate": 0.05, "seed": 0, "device": "cpu"}
BLANK = [[0] * 28 for _ in range(28)]


def test_kubetorch_is_the_pinned_version():
    # local_server relies on private hooks of this exact version (Module.service_config, Compute.client_port).
    assert kt.__version__ == "0.5.1"
    assert local_server.KUBETORCH_VERSION == kt.__version__
    assert local_server.kubetorch_version() == kt.__version__


def test_code_root_is_the_folder_kube_syncs():
    from kubetorch_example import kube

    assert local_server.CODE_ROOT == kube.CODE_ROOT
    assert (local_server.CODE_ROOT / "kubetorch_example" / "__init__.py").is_file()


# ------------------------------------------------------------------ trainer


@pytest.fixture(scope="module")
def samples(dataset_uri):
    manifest = storage.read_json(dataset_uri)
    return storage.read_json(manifest["samples"]["uri"])


@pytest.fixture(scope="module")
def trainer_server():
    with LocalServer.for_target(TRAINER, HYPERPARAMETERS) as server:
        yield server


@pytest.fixture(scope="module")
def training(trainer_server, dataset_uri, samples, tmp_path_factory):
    """One training session driven over HTTP; each step's answer, for the tests below to check."""
    out = tmp_path_factory.mktemp("trainer-artifacts")
    trainer = trainer_server.connect()
    steps = {"data": trainer.load_data(dataset_uri)}
    steps["train"] = trainer.train_model()
    steps["test"] = trainer.test_model()
    steps["history"] = trainer.record({**steps["train"], **steps["test"]})
    steps["checkpoint"] = trainer.save_checkpoint(str(out / "checkpoints" / "epoch-0001.pt"))
    steps["train_2"] = trainer.train_model()  # moves the weights on, so the reload below has something to undo
    steps["test_2"] = trainer.test_model()
    steps["resumed"] = trainer.load_checkpoint(steps["checkpoint"])
    steps["test_resumed"] = trainer.test_model()
    steps["model"] = trainer.save_model(str(out / "model" / "model.pt"))
    steps["predictions"] = trainer.predict(samples["images"])
    return trainer, steps


def test_load_data_reports_the_dataset(training):
    _, steps = training
    assert steps["data"] == {"train": 600, "test": 200, "device": "cpu"}


def test_one_epoch_learns_the_synthetic_digits(training):
    _, steps = training
    train, test = steps["train"], steps["test"]
    assert train["epoch"] == 1 and test["epoch"] == 1
    assert all(type(train[k]) is float for k in ("loss", "accuracy", "samples_per_s"))
    assert math.isfinite(train["loss"]) and train["samples_per_s"] > 0
    assert test["test_accuracy"] > 0.8  # chance is 0.1
    assert test["test_loss"] < math.log(10)  # better than a uniform guess


def test_record_returns_the_history(training):
    _, steps = training
    assert steps["history"] == [{**steps["train"], **steps["test"]}]


def test_checkpoint_round_trip_restores_the_weights(training):
    _, steps = training
    checkpoint = steps["checkpoint"]
    assert checkpoint["epoch"] == 1
    assert storage.sha256(Path(checkpoint["uri"]).read_bytes()) == checkpoint["sha256"]
    assert steps["train_2"]["epoch"] == 2
    assert steps["test_2"]["test_loss"] != steps["test"]["test_loss"]  # the second epoch changed the model
    assert steps["resumed"] == {"epoch": 1, "history": steps["history"]}
    # Same weights as after epoch 1, so the same loss to the last bit.
    assert steps["test_resumed"] == steps["test"]


def test_save_model_writes_a_verifiable_artifact(training):
    _, steps = training
    model = steps["model"]
    assert set(model) == {"uri", "sha256", "bytes"}
    data = Path(model["uri"]).read_bytes()
    assert len(data) == model["bytes"] and storage.sha256(data) == model["sha256"]


def test_trainer_predict_answers_json_ints_well_above_chance(training, samples):
    _, steps = training
    predictions = steps["predictions"]
    assert len(predictions) == len(samples["labels"]) == 64
    assert all(type(p) is int and 0 <= p <= 9 for p in predictions)
    accuracy = sum(p == y for p, y in zip(predictions, samples["labels"])) / len(predictions)
    assert accuracy > 0.8


def test_async_call_goes_over_the_same_server(training, samples):
    trainer, steps = training

    async def call():
        return await trainer.predict(samples["images"][:8], async_=True)

    assert asyncio.run(call()) == steps["predictions"][:8]


def test_trainer_before_load_data_fails_with_its_own_error():
    with LocalServer.for_target(TRAINER, HYPERPARAMETERS) as server:
        with pytest.raises(RuntimeError, match=r"call load_data\(dataset_uri\) before train_model"):
            server.connect().train_model()


# --------------------------------------------------------------- classifier


@pytest.fixture(scope="module")
def classifier_server(training):
    _, steps = training
    with LocalServer.for_target(CLASSIFIER, {"model": steps["model"], "device": "cpu"}) as server:
        yield server


@pytest.fixture(scope="module")
def classifier(classifier_server):
    return classifier_server.connect()


def test_classifier_predicts_what_the_trainer_predicts(classifier, training, samples):
    _, steps = training
    answer = classifier.predict(samples["images"])
    assert set(answer) == {"predictions", "confidences"}
    assert answer["predictions"] == steps["predictions"]
    assert all(type(c) is float and 0.1 <= c <= 1.0 for c in answer["confidences"])


def test_classifier_accepts_flat_digits(classifier, samples):
    flat = [[p for row in image for p in row] for image in samples["images"][:4]]
    assert classifier.predict(flat)["predictions"] == classifier.predict(samples["images"][:4])["predictions"]


BAD_INPUTS = {
    "wrong shape (27-pixel rows)": ([[[0] * 27] * 28], r"image 0: every row must have 28 pixels"),
    "wrong shape (100 pixels)": ([[0] * 100], r"image 0: expected 28x28 nested lists or a flat list of 784"),
    "wrong type (string)": ("a digit", r"images must be a list of digits, got str"),
    "wrong type (string pixel)": ([[["7"] * 28] * 28], r"image 0: pixels must be numbers, got str"),
    "wrong type (bool pixel)": ([[[True] * 28] * 28], r"image 0: pixels must be numbers, got bool"),
    "pixel over 255": ([[[256] * 28] * 28], r"image 0: pixel 256 is outside 0\.\.255"),
    "negative pixel": ([BLANK, [[-1] * 28] * 28], r"image 1: pixel -1 is outside 0\.\.255"),
    "empty batch": ([], r"images is empty"),
    "batch over MAX_BATCH": ([BLANK] * (inference.MAX_BATCH + 1),
                             rf"batch of {inference.MAX_BATCH + 1} digits is over the maximum of {inference.MAX_BATCH}"),
}


@pytest.mark.parametrize("images, message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_raises_value_error_on_the_client_and_the_service_survives(classifier, classifier_server, images,
                                                                              message):
    with pytest.raises(ValueError, match=message) as caught:
        classifier.predict(images)
    # Rebuilt from the server's answer: a ValueError subclass carrying the remote traceback and pod.
    assert "images_to_tensor" in caught.value.remote_traceback
    assert caught.value.pod_name == f"{classifier_server.service_name}-local"
    assert classifier.predict([BLANK])["predictions"][0] in range(10)


def test_nan_from_the_client_handle_fails_before_reaching_the_service(classifier):
    # kubetorch's client posts with httpx's json=, which refuses NaN and infinities (allow_nan=False):
    # the ValueError is raised on this side, before any request, so it has no remote traceback.
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant") as caught:
        classifier.predict([[[float("nan")] * 28] * 28])
    assert not hasattr(caught.value, "remote_traceback")
    assert classifier.predict([BLANK])["predictions"][0] in range(10)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_in_a_raw_request_is_refused_by_predict(classifier_server, classifier, literal):
    # Other clients can send the NaN/Infinity literals, which Python's json (the server's parser) accepts;
    # predict's own check must refuse them.
    body = '{"args": [[[' + ", ".join([literal] * 784) + "]]]}"
    response = httpx.post(f"{classifier_server.url}/MnistClassifier/predict", content=body,
                          headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 400
    error = response.json()
    assert error["error_type"] == "ValueError"
    assert error["message"] == f"image 0: pixel {float(literal)!r} is outside 0..255"
    assert classifier.predict([BLANK])["predictions"][0] in range(10)


def test_nan_and_infinity_are_refused_in_process():
    for value in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValueError, match=r"image 0: pixel .* is outside 0\.\.255"):
            inference.images_to_tensor([[[value] * 28] * 28])


def test_unknown_method_fails_clearly(classifier):
    with pytest.raises(Exception, match=r"Method 'distribute' not found in class 'MnistClassifier'") as caught:
        classifier.distribute(num_nodes=2)
    assert "HTTPException" in type(caught.value).__mro__[1].__name__
    assert classifier.predict([BLANK])["predictions"][0] in range(10)


def test_unknown_class_in_the_path_is_a_404(classifier_server):
    response = httpx.post(f"{classifier_server.url}/SimpleTrainer/predict", json={"args": [[BLANK]]}, timeout=30)
    assert response.status_code == 404
    assert "Found 'MnistClassifier' instead" in response.json()["detail"]


def test_http_contract_documented_for_curl(classifier_server, classifier):
    """The request shape serve.py's docstring and the README show: POST /<class>/<method>, {"args": [...]}."""
    url = f"{classifier_server.url}/MnistClassifier/predict"
    ok = httpx.post(url, json={"args": [[BLANK]]}, timeout=30)
    assert ok.status_code == 200
    assert ok.json() == classifier.predict([BLANK])
    by_keyword = httpx.post(url, json={"kwargs": {"images": [BLANK]}}, timeout=30)
    assert by_keyword.json() == ok.json()
    bad = httpx.post(url, json={"args": ["not a list"]}, timeout=30)
    assert bad.status_code == 400
    assert set(bad.json()) == {"error_type", "message", "traceback", "pod_name", "state"}
    assert bad.json()["message"] == "images must be a list of digits, got str"
    health = httpx.post(f"{classifier_server.url}/MnistClassifier/health", timeout=30)  # no body at all
    assert health.json() == {"status": "ok", "device": "cpu"}


def test_pickle_is_refused(classifier_server, classifier):
    # Unpickling a request body would run the sender's code; the server only takes JSON (KT_ALLOWED_SERIALIZATION).
    response = httpx.post(f"{classifier_server.url}/MnistClassifier/health", json={"data": "gARLAS4="},
                          headers={"X-Serialization": "pickle"}, timeout=30)
    assert response.status_code == 400
    assert "Serialization format 'pickle' not allowed" in response.json()["message"]
    with pytest.raises(Exception, match="Serialization format 'pickle' not allowed"):
        classifier.health(serialization="pickle")


# A class whose module imports no torch: cheap servers for the lifecycle tests.
LIGHT = ("kubetorch_example.config", "RunConfig")


def test_client_settings_are_set_while_connected_and_restored_after(tmp_path):
    # In a fresh process: here the module's servers hold the settings until the module ends.
    script = f"""
import kubetorch as kt
from kubetorch_example.local_server import LocalServer
before = (kt.config.api_url, kt.config.stream_metrics)
assert before == (None, True), before
with LocalServer(*{LIGHT!r}, {{"epochs": 3}}) as a, LocalServer(*{LIGHT!r}) as b:
    first, second = a.connect(), b.connect()
    # Without api_url, every call would start `kubectl port-forward` (Compute.client_port()).
    assert kt.config.api_url == a.url and kt.config.stream_metrics is False
    assert first.hyperparameters()["epochs"] == 3 and second.hyperparameters()["epochs"] == 5
    b.stop()
    assert first.hyperparameters()["epochs"] == 3  # a's settings survive b's stop
after = (kt.config.api_url, kt.config.stream_metrics)
assert after == before, after
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k not in ("KT_API_URL", "KT_STREAM_METRICS")}
    env.update(PYTHONPATH=str(REPO / "dags"), HOME=str(tmp_path))  # no ~/.kt/config.yaml
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"


def test_a_model_that_does_not_load_fails_at_the_first_call():
    missing = {"uri": "/nonexistent/model.pt", "sha256": "0" * 64}
    with LocalServer.for_target(CLASSIFIER, {"model": missing}) as server:
        with pytest.raises(Exception, match="could not read /nonexistent/model.pt") as caught:
            server.connect().health()
        assert type(caught.value).__mro__[1].__name__ == "StorageError"
        assert "could not read /nonexistent/model.pt" in server.log_tail()


def test_a_busy_port_is_refused_not_mistaken_for_this_server():
    # The server already there answers /health too; it must not pass for the new one.
    with LocalServer(*LIGHT) as first:
        taken = LocalServer(*LIGHT, port=first.port)
        with pytest.raises(ServerError, match=rf"cannot serve RunConfig on 127.0.0.1:{first.port}: .*in use"):
            taken.start()
        assert not taken.running
        assert first.connect().hyperparameters()["epochs"] == 5


def test_a_server_that_exits_at_startup_says_why(monkeypatch):
    monkeypatch.setenv("KT_LOG_LEVEL", "bogus")  # kubetorch's import fails on an unknown log level
    server = LocalServer(*LIGHT)
    started = time.monotonic()
    with pytest.raises(ServerError, match=r"exited with code 1 before answering GET /health") as caught:
        server.start()
    assert time.monotonic() - started < 30
    assert "Last lines of the server's output" in str(caught.value)
    assert "module 'logging' has no attribute 'BOGUS'" in str(caught.value)
    assert not server.running


def test_a_server_that_does_not_answer_in_time_is_stopped():
    server = LocalServer(*LIGHT, startup_timeout=0.05)  # shorter than any start
    with pytest.raises(ServerError, match=r"did not answer GET http://127.0.0.1:\d+/health and /ready within 0.05s"):
        server.start()
    assert not server.running and server.proc is None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_stop_ends_the_server_and_its_worker():
    server = LocalServer(*LIGHT).start()
    pgid = server.proc.pid  # the server leads its own process group (start_new_session)
    assert server.connect().hyperparameters()["epochs"] == 5  # the worker process exists and answers
    assert _group_alive(pgid)
    server.stop()
    server.stop()  # twice is fine
    assert not server.running
    deadline = time.monotonic() + 10
    while _group_alive(pgid) and time.monotonic() < deadline:  # killed processes may take a moment to be reaped
        time.sleep(0.1)
    assert not _group_alive(pgid), "a process of the server's group outlived stop()"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health", timeout=2)


# ------------------------------------------------------------------ serve.py


def _serve(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "dags")}
    return subprocess.Popen([sys.executable, "-m", "kubetorch_example.serve", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_serve_help_states_every_default():
    proc = _serve("--help")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    text = " ".join(out.split())
    assert "--model URI" in text and "(default: the newest finished run's" in text
    assert "(default: 127.0.0.1)" in text and "no authentication" in text
    assert "(default: 8000)" in text


def test_serve_refuses_a_file_that_is_not_a_model_manifest_and_warns_about_open_hosts(dataset_uri):
    proc = _serve("--model", dataset_uri, "--host", "0.0.0.0")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "warning: binding 0.0.0.0: the server has no authentication" in err
    assert "is not a model manifest" in err
    assert "Traceback" not in err


def test_serve_serves_the_model_until_interrupted(training, samples, tmp_path):
    _, steps = training
    manifest = tmp_path / "model.json"
    manifest.write_text(json.dumps({"kind": "mnist-model", "model": steps["model"]}))
    port = local_server.free_port()
    proc = _serve("--model", str(manifest), "--port", str(port))
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, f"serve exited early: {proc.wait(5)} {proc.stderr.read()}"
            lines.append(line)
            if line.strip().startswith("classifier.predict("):  # the last line of the usage text
                break
        out = "".join(lines)
        assert f"Serving MnistClassifier at http://127.0.0.1:{port}" in out
        assert f"curl -s -X POST http://127.0.0.1:{port}/MnistClassifier/predict" in out
        assert f'connect("http://127.0.0.1:{port}", "kubetorch_example.inference", "MnistClassifier")' in out
        answer = httpx.post(f"http://127.0.0.1:{port}/MnistClassifier/predict",
                            json={"args": [samples["images"][:8]]}, timeout=30).json()
        assert answer["predictions"] == steps["predictions"][:8]
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
