# One command sets up and runs the main job (`make demo`); one sets up and runs the tests (`make test`).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.zoo-installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

# When $(PYTHON) already has a torch >= 2.4 (a CUDA build, say), the venv sees it through
# --system-site-packages and keeps it. Otherwise the venv is a clean one and gets the CPU build
# torch==2.13.0: an unpinned torch would pull several GB of CUDA packages onto a CPU machine.
$(STAMP): pyproject.toml
	if $(PYTHON) tools/ensure_torch.py; then \
	    $(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
	    $(PYTHON) -m venv $(VENV) && $(BIN)/python -m pip install --quiet "torch==2.13.0"; \
	fi
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m pip install --quiet -e examples/zoo-distilbert
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
