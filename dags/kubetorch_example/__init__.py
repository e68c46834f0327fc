"""Train and serve an MNIST classifier from Airflow, on Kubernetes GPUs through kubetorch.

Importing this package (and ``config``, ``storage``, ``backends``, ``kube``,
``tasks``) never imports torch: the Airflow image holds Airflow and kubetorch
only. ``model``, ``transforms``, ``data``, ``trainer`` and ``inference`` are the
torch side; they run in the pods, or in-process with the local backend.
"""

from pathlib import Path

__version__ = "0.1.0"

# The folder that holds this package (the Airflow dags folder). kubetorch rsyncs it
# to each pod, and the local kubetorch server imports from it, so both run this code.
CODE_ROOT = Path(__file__).resolve().parent.parent
