# The two commands of the README:  `make demo`  and  `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW := ignore

.PHONY: install demo test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e ".[dev,dask,s3]"
	# test-only: pytorch-grad-cam for the Grad-CAM parity test; --no-deps because PyPI's
	# torchvision does not load beside the CPU torch wheel (the test stubs it).
	$(BIN)/pip install -q --disable-pip-version-check --no-deps grad-cam ttach opencv-python-headless
	touch $@

demo: install
	$(BIN)/dcam demo

test: install
	$(BIN)/pytest -q

bench: install
	$(BIN)/python benchmarks/bench_refine.py

clean:
	rm -rf artifacts/demo .pytest_cache
