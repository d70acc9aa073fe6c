"""`make demo`: zoo's main job end to end, with or without the Hub.

List the catalog; verify GPT-2 against transformers; run one model of each family (text
generation, fill-mask, image classification, translation); convert GPT-2 to the Hub layout and
load the result with transformers; export BERT to ONNX and check it in ONNX Runtime. Each model runs on its real weights when the Hub (or the
Hugging Face cache) has them; otherwise on seeded random weights, and the demo says so on the
line before: every step is then the real one, only the outputs mean nothing. Random weights
come with a tokenizer trained in code on a few sentences, so the same text goes in.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ZOO = [sys.executable, "-m", "zoo"]
OFFLINE_SIGNS = ("cannot download", "HF_HUB_OFFLINE", "not in the Hugging Face cache")


def zoo(*args: str) -> subprocess.CompletedProcess:
    print(f"\n$ zoo {' '.join(args)}", flush=True)
    done = subprocess.run(ZOO + list(args), capture_output=True, text=True)
    for line in done.stdout.splitlines():  # an embedding is 768 numbers: its start will do
        print(line if len(line) <= 160 else line[:157] + "...")
    return done


def run(*args: str, text: bool = True) -> None:
    """``zoo`` with ``args``; where the weights cannot be had, the same on random weights (with
    a tokenizer trained in code when the input is ``text``)."""
    done = zoo(*args)
    if done.returncode == 0:
        return
    if not any(sign in done.stderr for sign in OFFLINE_SIGNS):
        sys.stderr.write(done.stderr)
        sys.exit(done.returncode)
    tokenizer = ", with a tokenizer trained in code" if text else ""
    print(f"  (no Hub here: the same on seeded random weights{tokenizer})", flush=True)
    offline = [a for a in args if a != "--allow-pickle"]  # random weights are safetensors
    done = zoo(*offline, "--random-weights")
    sys.stderr.write(done.stderr)
    if done.returncode != 0:
        sys.exit(done.returncode)


def main() -> None:
    zoo("list")
    if zoo("verify", "gpt2").returncode != 0:
        sys.exit("zoo verify gpt2 failed")
    with tempfile.TemporaryDirectory(prefix="zoo-demo-") as tmp:
        run("run", "gpt2", "The zoo opens at", "--max-new-tokens", "12")
        run("run", "bert-base-uncased", "Paris is the [MASK] of France.")
        image = Path(tmp) / "gradient.png"
        from PIL import Image

        Image.linear_gradient("L").convert("RGB").save(image)
        run("run", "vit-base-patch16-224", str(image), text=False)
        run("run", "opus-mt-en-de", "The house is wonderful.", "--allow-pickle", "--max-new-tokens", "12")
        out = Path(tmp) / "gpt2-hf"
        run("convert", "gpt2", "--to", "hf", "--out", str(out), text=False)
        print(f"\n$ python -c 'transformers.AutoModelForCausalLM.from_pretrained(\"{out}\")'", flush=True)
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(out))
        print(f"transformers loads zoo's export: {type(model).__name__}, "
              f"{sum(p.numel() for p in model.parameters()):,} parameters")
        graph = Path(tmp) / "bert-onnx"
        run("convert", "bert-base-uncased", "--to", "onnx", "--out", str(graph), text=False)
        parity = json.loads((graph / "onnx.json").read_text())["parity"]
        worst = max(parity["max_abs_diff"].values())
        print(f"ONNX Runtime runs zoo's graph on inputs of another shape ({parity['inputs']['input_ids']}): "
              f"largest difference from the model {worst:.1e}")


if __name__ == "__main__":
    main()
