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
$(STAMP): pyproject.toml examples/zoo-distilbert/pyproject.toml
	if $(PYTHON) tools/ensure_torch.py; then \
	    $(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
	    $(PYTHON) -m venv $(VENV) && $(BIN)/python -m pip install --quiet "torch==2.13.0"; \
	fi
	$(BIN)/python -m pip install --quiet -e ".[test,big,onnx]"
	$(BIN)/python -m pip install --quiet -e examples/zoo-distilbert
	touch $(STAMP)

# list, verify, run each family, convert and load the export with transformers (tools/demo.py);
# on seeded random weights, saying so, where the Hub cannot be reached
demo: setup
	$(BIN)/python tools/demo.py

test: setup
	$(BIN)/python -m pytest -q

# Side by side with transformers on the same (random, seeded) weights, CPU float32; figures in docs/benchmarks.md.
bench: setup
	$(BIN)/zoo bench gpt2 --compare --cold --scaling
	$(BIN)/zoo bench gpt2 --compare --batch 8 --new-tokens 16 --train
	$(BIN)/zoo bench bert-base-uncased --compare --batch 8 --seq 128 --train
	$(BIN)/zoo bench vit-base-patch16-224 --compare --batch 8 --train
	$(BIN)/zoo bench opus-mt-en-de --compare --batch 8 --seq 32 --new-tokens 64
	$(BIN)/zoo bench opus-mt-en-de --compare --batch 1 --seq 32 --new-tokens 64

clean:
	rm -rf $(VENV) build dist *.egg-info
