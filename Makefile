# EDSR upscaler: the two commands of the README, and a few helpers. `make help` lists them.
#
#   make serve   create .venv if needed, install the service (no TensorFlow), serve every
#                model in models/ on http://localhost:8000 (MODEL=file.onnx: that one alone)
#   make test    create .venv if needed, install everything (train + dev extras), run ruff
#                (check and format --check), pytest and the service image check
#                (scripts/check_service_image.py: the image's install in a fresh venv, its CMD,
#                one upscale; CI has no Docker engine)
#
# Both are idempotent: .venv is created once, and each install runs again only when
# pyproject.toml changed since (stamp files inside .venv).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# `make serve` listens on localhost only: the API has no authentication and an upscale keeps
# every core busy, so exposing it to the network should be a decision (HOST=0.0.0.0). The
# container listens on 0.0.0.0, and compose publishes it on port 8000.
HOST ?= 127.0.0.1
PORT ?= 8000
# Empty: serve every model in models/ (UPSCALER_MODELS_DIR); MODEL=file.onnx serves that one alone.
MODEL ?=
# The retrained model is exported with its half-precision copy, as the shipped one is; set
# EXPORT_ARGS= (empty) to skip it.
EXPORT_ARGS ?= --fp16
# `make serve SERVE_EXTRAS=gpu` adds NVIDIA's CUDA 13 / cuDNN 9 wheels (docs/operations.md, GPU hosts).
SERVE_EXTRAS ?=
PIP_INSTALL := $(PY) -m pip install$(if $(CI), --progress-bar off,)

SERVE_STAMP := $(VENV)/.installed-serve$(if $(SERVE_EXTRAS),-$(SERVE_EXTRAS),)
TRAIN_STAMP := $(VENV)/.installed-train
TEST_STAMP := $(VENV)/.installed-test

.PHONY: help serve test lint format retrain settings-table docker-build docker-build-cpu clean

help:
	@echo "make serve            install the service into $(VENV) and serve $(or $(MODEL),models/) on http://$(HOST):$(PORT)"
	@echo "                      (MODEL=..., HOST=0.0.0.0, PORT=..., SERVE_EXTRAS=gpu)"
	@echo "make test             install train+dev extras, run ruff, pytest and the image check"
	@echo "make retrain DATA=dir train, export, evaluate (BENCH='dir ...'), install into models/"
	@echo "                      (ARGS='--steps 20000 ...', MODEL_NAME=..., DEGRADATION=realistic, RUN_DIR=..., EXPORT_ARGS=)"
	@echo "make lint | format    ruff check + format check | ruff format + ruff check --fix"
	@echo "make settings-table   regenerate docs/api.md's UPSCALER_* table from service/config.py"
	@echo "make docker-build     build the GPU service image (docker-build-cpu: the CPU one)"

# --- the virtual environment -------------------------------------------------------------------

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is needed; found " + sys.version.split()[0] + ". Run: make ... PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip

$(SERVE_STAMP): pyproject.toml | $(PY)
	$(PIP_INSTALL) -e '.$(if $(SERVE_EXTRAS),[$(SERVE_EXTRAS)],)'
	@touch $@

$(TRAIN_STAMP): pyproject.toml | $(PY)
	$(PIP_INSTALL) -e '.[train]'
	@touch $@

$(TEST_STAMP): pyproject.toml | $(PY)
	$(PIP_INSTALL) -e '.[train,dev]'
	@touch $@

# The browser tests (tests/web) drive Debian's chromium through Playwright; Playwright's own
# browser download (`playwright install`) is never used.
CHROMIUM := /usr/lib/chromium/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

$(CHROMIUM):
	@if command -v apt-get >/dev/null; then \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
		echo "No apt-get: install Chromium at $(CHROMIUM); the browser tests skip without it (and fail under CI=true)."; \
	fi

# --- the two commands ----------------------------------------------------------------------------

# No MALLOC_ARENA_MAX: the server bounds its own malloc arenas (service.host.limit_malloc_arenas).
# Jobs (POST /jobs, and the page's progress and reload pick-up) keep their files in ./jobs.
serve: export UPSCALER_JOBS_DIR ?= jobs
serve: $(SERVE_STAMP)
	$(PY) -m service --host $(HOST) --port $(PORT)$(if $(MODEL), --model '$(MODEL)',)

test: $(TEST_STAMP) $(CHROMIUM)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest
	$(PY) scripts/check_service_image.py

# --- helpers -------------------------------------------------------------------------------------

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(TEST_STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

retrain: $(TRAIN_STAMP)
	@test -n '$(DATA)' || case ' $(ARGS) ' in *' --resume '*) ;; *) echo "usage: make retrain DATA='folder ...' [ARGS='--steps 20000'] [BENCH='Set5-folder ...'] [MODEL_NAME=edsr_x4_real] [DEGRADATION=realistic] [RUN_DIR=...]; to continue a run: make retrain RUN_DIR=runs/NAME ARGS=--resume" >&2; exit 2;; esac
	PYTHON='$(PY)' BENCH='$(BENCH)' RUN_DIR='$(RUN_DIR)' MODEL_OUT='$(MODEL_OUT)' EXPORT_ARGS='$(EXPORT_ARGS)' \
		MODEL_NAME='$(MODEL_NAME)' DEGRADATION='$(DEGRADATION)' \
		bash scripts/retrain.sh $(foreach dir,$(DATA),--data '$(dir)') $(ARGS)

settings-table: $(SERVE_STAMP)
	$(PY) scripts/settings_table.py --write

docker-build:
	docker build -t edsr-upscaler:gpu .

docker-build-cpu:
	docker build --build-arg SERVICE_EXTRAS= -t edsr-upscaler:cpu .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
