"""Serve a trained model on this machine with kubetorch's own HTTP server, as the pods do.

    python -m kubetorch_example.serve                      # the newest run's model
    python -m kubetorch_example.serve --model artifacts/mnist_training_pipeline/<run id>/model/model.json

Loads ``MnistClassifier`` (init_args ``{"model": <the manifest's "model"
entry>}``) behind ``kubetorch.serving.http_server`` on 127.0.0.1:8000, prints
how to call it, and serves until Ctrl-C. Needs torch and
``kubetorch[server]==0.5.1`` here, and boto3 for an ``s3://`` model.

The HTTP API is kubetorch's: ``POST /<class>/<method>`` with a JSON body
``{"args": [...], "kwargs": {...}}`` (both optional). The header
``X-Serialization`` defaults to ``json``; ``pickle`` is refused. The answer
is the method's return value as JSON. An exception comes back as
``{"error_type", "message", "traceback", "pod_name", "state"}`` with a status
that follows its type: 400 for ValueError, 422 for TypeError, 404 for an
unknown method or class, 500 for most others.
Verified with kubetorch 0.5.1 (``run_callable``, http_server.py:1720) against
a model trained on the tests' synthetic digits (your numbers will differ):

    $ python -c 'import json; print(json.dumps({"args": [[[[0] * 28] * 28]]}))' \\
        | curl -s -X POST http://127.0.0.1:8000/MnistClassifier/predict \\
            -H 'Content-Type: application/json' -d @-
    {"predictions":[0],"confidences":[0.115271]}

    $ python -c 'import json, sys; print(json.dumps({"args": [json.load(open(sys.argv[1]))["images"][:4]]}))' \\
        <run>/dataset/samples.json | curl -s -X POST http://127.0.0.1:8000/MnistClassifier/predict \\
            -H 'Content-Type: application/json' -d @-
    {"predictions":[1,4,5,5],"confidences":[0.270961,0.196534,0.762563,0.74587]}

    $ curl -s -X POST http://127.0.0.1:8000/MnistClassifier/predict \\
        -H 'Content-Type: application/json' -d '{"args": ["not a list"]}'
    {"error_type":"ValueError","message":"images must be a list of digits, got str",
     "traceback":"Traceback (most recent call last):\\n ...","pod_name":"mnist-classifier-local","state":null}
    (HTTP 400; one line, wrapped here)

    $ curl -s -X POST http://127.0.0.1:8000/MnistClassifier/health
    {"status":"ok","device":"cpu"}

``samples.json`` holds 64 test digits and their labels (here 1, 4, 5, 5); the
dataset manifest next to it names it. From Python, the same call through
kubetorch's client, which raises the remote ValueError as a ValueError:

    from kubetorch_example.local_server import connect
    classifier = connect("http://127.0.0.1:8000", "kubetorch_example.inference", "MnistClassifier")
    classifier.predict([[[0] * 28] * 28])

The server has no authentication and returns tracebacks in its errors:
keep it on 127.0.0.1 unless the network around it is trusted.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from kubetorch_example import storage
from kubetorch_example.local_server import DEFAULT_HOST, LOOPBACK_HOSTS, LocalServer, ServerError
from kubetorch_example.tasks import latest_summary

CLASSIFIER_MODULE = "kubetorch_example.inference"
CLASSIFIER_CLASS = "MnistClassifier"
DEFAULT_PORT = 8000
SERVICE_NAME = "mnist-classifier"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kubetorch_example.serve",
        description="Serve a trained MNIST model with kubetorch's HTTP server on this machine "
                    "(POST /MnistClassifier/predict). Blocks until Ctrl-C.",
    )
    parser.add_argument("--model", default=None, metavar="URI",
                        help="the training run's model manifest (model.json): a local path, file:// or s3:// URI "
                             "(default: the newest finished run's, under $MNIST_STORAGE_ROOT)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"interface to bind (default: {DEFAULT_HOST}). The server has no authentication: "
                             "any other address lets anyone who can reach it call the model")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default: {DEFAULT_PORT})")
    return parser


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def model_entry(model_uri: str) -> dict:
    """The manifest's ``model`` entry (uri + sha256), or ValueError saying what is wrong."""
    manifest = storage.read_json(model_uri)
    entry = manifest.get("model") if isinstance(manifest, dict) else None
    if not (isinstance(entry, dict) and entry.get("uri") and entry.get("sha256")):
        raise ValueError(f"{model_uri} is not a model manifest (model.json with a 'model' entry holding uri and "
                         "sha256); pass the model.json the train step wrote")
    return entry


def usage(url: str) -> str:
    return f"""Serving {CLASSIFIER_CLASS} at {url}  (Ctrl-C stops it)

Call it with curl (a blank 28x28 digit; pixels are raw values 0..255):
  python -c 'import json; print(json.dumps({{"args": [[[[0] * 28] * 28]]}}))' \\
    | curl -s -X POST {url}/{CLASSIFIER_CLASS}/predict -H 'Content-Type: application/json' -d @-

or with kubetorch's client:
  from kubetorch_example.local_server import connect
  classifier = connect("{url}", "{CLASSIFIER_MODULE}", "{CLASSIFIER_CLASS}")
  classifier.predict([[[0] * 28] * 28])
"""


def _stop_on_signal(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not is_loopback(args.host):
        print(f"warning: binding {args.host}: the server has no authentication and returns tracebacks; anyone who "
              f"can reach port {args.port} can call the model. Use --host {DEFAULT_HOST} unless the network is "
              "trusted.", file=sys.stderr)
    try:
        entry = model_entry(args.model or latest_summary()["model"])
    except (ValueError, storage.StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    server = LocalServer(CLASSIFIER_MODULE, CLASSIFIER_CLASS, {"model": entry}, host=args.host, port=args.port,
                         service_name=SERVICE_NAME)
    # Ctrl-C and SIGTERM both stop the server cleanly (SIGINT is set explicitly: a shell may start us ignoring it).
    signal.signal(signal.SIGINT, _stop_on_signal)
    signal.signal(signal.SIGTERM, _stop_on_signal)
    try:
        server.start()
        try:
            # The class loads in the server's worker process; a bad or unreadable model surfaces here.
            health = server.connect().health()
        except Exception as exc:
            message = str(exc).split("\n\n")[0]  # the remote error, without its traceback
            print(f"error: the model did not load: {type(exc).__name__}: {message}", file=sys.stderr)
            return 1
        print(f"model {entry['uri']} loaded on {health['device']}")
        print(usage(server.url), flush=True)
        while server.running:
            time.sleep(0.5)
        print(f"error: the server exited unexpectedly:\n{server.log_tail()}", file=sys.stderr)
        return 1
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping", file=sys.stderr)
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
