PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test run stop clean-data lint sim proto image bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check raftd raftctl tests integration_tests conftest.py
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check raftd raftctl tests integration_tests conftest.py
	$(BIN)/mypy

# Regenerate raftd/pb from proto/ (tests fail when the committed output is stale).
proto: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. --mypy_out=. --grpc_python_out=. --mypy_grpc_out=. proto/raftd/pb/*.proto

# The raftd:latest image; with no registry, first a base image from this host's Debian package sources.
image: $(STAMP)
	deploy/build-image.sh

sim: $(STAMP)
	$(BIN)/python -m raftd.sim --seeds 2000
	PYTHONHASHSEED=0 $(BIN)/python -m raftd.sim --real --seeds 2000

# The 3-node cluster of config.conf in the foreground; Ctrl-C or SIGTERM stops it; data stays in ./data.
run: $(STAMP)
	$(BIN)/python -m raftd.devcluster config.conf

# Stop the cluster `make run` started from this directory (from another terminal).
stop: $(STAMP)
	$(BIN)/python -m raftd.devcluster --stop

# Stop it, then delete its data (./data): the next `make run` starts a new cluster.
clean-data: stop
	rm -rf data

# The performance figures on a fresh local 3-node cluster (raftctl/benchmark.py; BENCH_* env knobs).
bench: $(STAMP)
	$(BIN)/python -m raftctl.benchmark

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
