# Everything a fresh clone needs: `make demo` runs the pipeline, `make test` runs the tests.
# Each target sets up the virtual environment it needs first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA_SOURCE ?= download
EPOCHS ?= 5

# Airflow runs from this checkout, on SQLite, with no servers.
export AIRFLOW_HOME ?= $(CURDIR)/.airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export MNIST_STORAGE_ROOT ?= $(CURDIR)/artifacts
# A path is made absolute, since Airflow's tasks may run from another folder.
export MNIST_DATA_SOURCE := $(if $(filter download s3://%,$(DATA_SOURCE)),$(DATA_SOURCE),$(abspath $(DATA_SOURCE)))

.PHONY: setup demo test dry-run serve benchmark clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/torch.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --requirement requirements/torch.txt
	$(PY) -m pip install --quiet --editable '.[airflow,train,dev]'
	touch $@

## demo: run the whole DAG through Airflow on this machine (local backend), then print the summary.
demo: setup
	$(VENV)/bin/airflow db migrate > /dev/null
	$(VENV)/bin/airflow dags test mnist_training_pipeline -c '{"epochs": $(EPOCHS)}'
	$(PY) -m kubetorch_example.tasks summary

## dry-run: validate parameters, storage and data source without computing anything.
dry-run: setup
	$(PY) -m kubetorch_example.tasks all --dry-run

## test: the whole test suite (what CI runs).
test: setup
	$(PY) -m pytest

## benchmark: print speed and accuracy tables (see benchmarks/).
benchmark: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf .airflow artifacts .pytest_cache
