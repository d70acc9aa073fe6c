# One command sets up and runs the main job (`make demo`); one sets up and runs the tests (`make test`).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.zoo-installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

# --system-site-packages lets the venv see a torch the user already installed (a CUDA build, say).
# Only when no torch >= 2.4 is importable do we install the CPU build, torch==2.13.0: an unpinned
# torch would pull several GB of CUDA packages onto a CPU-only machine.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/python tools/ensure_torch.py || $(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: setup
	$(BIN)/zoo list
	$(BIN)/zoo verify gpt2

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/bench_gpt2.py

clean:
	rm -rf $(VENV) build dist *.egg-info
