"""`zoo train` / zoo.train: the data each task reads (checked before any step), the loop, its
checkpoints (loaded back by transformers and by zoo), --resume, determinism, the copy task,
and torch.distributed with two processes."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

import zoo
from zoo import tinytokenizer
from zoo.errors import InputError
from zoo.registry import get_catalog
from zoo.trainingdata import load_dataset

TEXTS = ["The zoo opens at nine in the morning.", "Paris is the capital of France.", "The house is wonderful.",
         "The cat sat on the mat while the dog slept in the garden.", "Every weight is read from the file."]


def _gpt2(root: Path) -> Path:
    conv = get_catalog().converter("hf_gpt2")
    config = {**conv.tiny_config, "vocab_size": 512, "n_positions": 64, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
              "attn_pdrop": 0.0}
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(**config)).save_pretrained(str(root))
    tinytokenizer.write(root, conv.tokenizer, config)
    return root


def _bert_classifier(root: Path, **extra) -> Path:
    conv = get_catalog().converter("hf_bert")
    config = {**conv.tiny_config, "vocab_size": 512, "num_labels": 2, "id2label": {0: "NEG", 1: "POS"},
              "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, **extra}
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(transformers.BertConfig(**config)).save_pretrained(str(root))
    tinytokenizer.write(root, conv.tokenizer, config)
    return root


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return _gpt2(tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return _bert_classifier(tmp_path_factory.mktemp("bert-cls"))


# ----------------------------------------------------------------------------- data


def _loaded(folder, task=None):
    from zoo.loading import load_full

    return load_full(str(folder), device="cpu", task=task)


@pytest.mark.parametrize("content, message", [
    ("", "empty: no records"),
    ('{"text": "fine"}\n{"text": 3}\n', ":2: 'text' must be a non-empty string"),
    ('{"text": "fine"}\nnot json\n', ":2: not a JSON object"),
    ('{"txt": "typo"}\n', ":1: no 'text' field"),
])
def test_bad_text_data_names_the_file_and_line(content, message, gpt2, tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(content)
    with pytest.raises(InputError) as err:
        load_dataset(_loaded(gpt2), "text-generation", str(path), 32, 0)
    assert message in str(err.value) and str(path) in str(err.value)


def test_bad_classification_and_translation_data_are_named(classifier, gpt2, tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text('{"text": "good", "label": "POS"}\n{"text": "bad", "label": "MEH"}\n')
    with pytest.raises(InputError, match=r"labels.jsonl:2: unknown label 'MEH' \(labels: NEG, POS\)"):
        load_dataset(_loaded(classifier), "text-classification", str(path), 32, 0)
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("a house\tein Haus\nno tab here\n")
    with pytest.raises(InputError, match=r"pairs.tsv:2: a line holds a source, a TAB, and a target"):
        load_dataset(_loaded(gpt2), "translation", str(tsv), 32, 0)
    with pytest.raises(InputError, match="no such folder"):
        load_dataset(_loaded(gpt2), "image-classification", str(tmp_path / "nothing"), 32, 0)
    with pytest.raises(InputError, match="no such data file"):
        load_dataset(_loaded(gpt2), "text-generation", str(tmp_path / "missing.txt"), 32, 0)


# ----------------------------------------------------------------------------- the loop


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "docs.txt"
    path.write_text("\n".join(TEXTS * 4) + "\n")
    return path


def _weights(folder):
    from zoo.checkpoint import read_safetensors

    return {k: v.clone() for k, v in read_safetensors(Path(folder) / "model.safetensors").items()}


def test_training_lowers_the_loss_and_writes_a_checkpoint_transformers_and_zoo_load(gpt2, text_file, tmp_path):
    summary = zoo.train(str(gpt2), data=str(text_file), out=str(tmp_path / "out"), steps=12, batch_size=4, lr=3e-3)
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert summary["steps"] == state["step"] == 12 and len(state["losses"]) == 12
    assert sum(state["losses"][-3:]) / 3 < sum(state["losses"][:3]) / 3  # it learns
    assert state["seed"] == 0 and str(text_file) in state["data"]
    model = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "out"))
    assert transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))("The zoo")["input_ids"]
    report = zoo.verify(str(tmp_path / "out"), device="cpu")
    assert report.passed and model is not None


def test_two_runs_with_one_seed_are_identical_and_resume_ends_where_one_run_ends(gpt2, text_file, tmp_path):
    # a constant rate: the run cut short at step 4 has the schedule of the full one
    args = dict(data=str(text_file), steps=8, batch_size=4, lr=3e-3, save_every=4, schedule="constant", warmup=2)
    one = zoo.train(str(gpt2), out=str(tmp_path / "one"), **args)
    two = zoo.train(str(gpt2), out=str(tmp_path / "two"), **args)
    assert json.loads((tmp_path / "one" / "trainer_state.json").read_text())["losses"] == \
        json.loads((tmp_path / "two" / "trainer_state.json").read_text())["losses"]
    # interrupted after the save at step 4, then resumed from it: the same weights as one run
    zoo.train(str(gpt2), out=str(tmp_path / "half"), **{**args, "steps": 4})
    zoo.train(str(gpt2), out=str(tmp_path / "resumed"), resume=str(tmp_path / "half"), **args)
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert one["loss"] == two["loss"]


def _two_processes(gpt2, text_file, out, *extra):
    """`zoo train --nproc 2` (torch.distributed's launcher, gloo) of ``gpt2``, 2 rows a process."""
    done = subprocess.run([sys.executable, "-m", "zoo", "train", str(gpt2), "--out", str(out),
                           "--data", str(text_file), "--lr", "3e-3", "--max-length", "6", "--schedule", "constant",
                           "--batch-size", "2", "--device", "cpu", "--nproc", "2", *map(str, extra)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((Path(out) / "trainer_state.json").read_text())


@pytest.mark.parametrize("sharded", [False, True], ids=["ddp", "fsdp"])
def test_two_processes_end_where_one_process_ends(gpt2, text_file, tmp_path, sharded):
    """`zoo train --nproc 2`, each process reading its half of every global batch, ends within
    1e-5 of one process with the same seed and global batch: with DistributedDataParallel (a
    copy of the model in each process), and with --fsdp (each process a shard of every weight,
    gradient and optimizer state). Every row is cut to 6 tokens, so the mean of the two
    processes' losses is the whole batch's."""
    args = dict(data=str(text_file), steps=4, lr=3e-3, max_length=6, schedule="constant")
    zoo.train(str(gpt2), out=str(tmp_path / "one"), batch_size=4, **args)
    fsdp = ["--fsdp"] if sharded else []
    state = _two_processes(gpt2, text_file, tmp_path / "two", "--steps", 4, *fsdp)
    assert state["summary"]["processes"] == 2 and state["step"] == 4 and state["options"]["fsdp"] == sharded
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    start = {k.removeprefix("transformer."): v for k, v in _weights(gpt2).items()}  # save_pretrained's names
    assert max(float((a[k] - start[k]).abs().max()) for k in a if k in start) > 1e-3  # it trained
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-5, worst


def test_an_fsdp_run_resumes_where_it_stopped(gpt2, text_file, tmp_path):
    """Sharded, the optimizer state is gathered whole into the checkpoint and scattered again on
    --resume: 2 steps and then 2 more end bit-identical to 4 steps. A checkpoint of a sharded
    run resumes sharded only."""
    whole = _two_processes(gpt2, text_file, tmp_path / "whole", "--steps", 4, "--fsdp")
    _two_processes(gpt2, text_file, tmp_path / "half", "--steps", 2, "--fsdp")
    resumed = _two_processes(gpt2, text_file, tmp_path / "half", "--steps", 4, "--fsdp", "--resume", tmp_path / "half")
    assert resumed["losses"] == whole["losses"]
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "half")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(InputError, match=r"saved by a run with --fsdp: resume it with --fsdp"):
        zoo.train(str(gpt2), out=str(tmp_path / "more"), data=str(text_file), steps=6, resume=str(tmp_path / "half"))


# ----------------------------------------------------------------------------- zoo train, every task

COPY = ["--config", "N=1", "--config", "d_model=32", "--config", "d_ff=64", "--config", "heads=4",
        "--config", "src_vocab=11", "--config", "tgt_vocab=11", "--config", "dropout=0"]


def _train_cli(*args):
    from click.testing import CliRunner

    from zoo.cli import cli

    result = CliRunner().invoke(cli, ["train", *[str(a) for a in args], "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_copy_task_learns_to_copy(tmp_path):
    """The Annotated Transformer's first example: a fresh transformer-base (one small layer)
    with the noam schedule copies held-out random sequences exactly after a few seconds."""
    summary = _train_cli("transformer-base", "--task", "copy", "--out", tmp_path / "copy", "--steps", 350,
                         "--batch-size", 32, "--lr", 2, "--warmup", 50, "--schedule", "noam", *COPY)
    assert summary["copy_accuracy"] >= 0.9, summary
    assert zoo.load(str(tmp_path / "copy"), device="cpu") is not None  # zoo-native: no transformers class


def test_every_task_trains_from_its_data_and_the_result_loads_in_transformers(classifier, tmp_path):
    (tmp_path / "labels.jsonl").write_text("\n".join(json.dumps({"text": t, "label": ["NEG", "POS"][i % 2]})
                                                     for i, t in enumerate(TEXTS * 2)) + "\n")
    summary = _train_cli(classifier, "--data", tmp_path / "labels.jsonl", "--out", tmp_path / "cls", "--steps", 3,
                         "--batch-size", 4, "--lr", 1e-3, "--eval", tmp_path / "labels.jsonl")
    assert summary["task"] == "text-classification" and summary["eval_loss"] > 0
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "cls"))
    assert model.config.id2label == {0: "NEG", 1: "POS"}

    mlm = tmp_path / "mlm"
    conv = get_catalog().converter("hf_bert")
    config = {**conv.tiny_config, "vocab_size": 512}
    transformers.BertForMaskedLM(transformers.BertConfig(**config)).save_pretrained(str(mlm))
    tinytokenizer.write(mlm, conv.tokenizer, config)
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in TEXTS * 2) + "\n")
    _train_cli(mlm, "--data", tmp_path / "docs.jsonl", "--out", tmp_path / "mlm-out", "--steps", 2, "--batch-size", 4)
    assert transformers.BertForMaskedLM.from_pretrained(str(tmp_path / "mlm-out")) is not None

    marian = tmp_path / "marian"
    conv = get_catalog().converter("hf_marian")
    config = {**conv.tiny_config, "vocab_size": 512, "pad_token_id": 511, "decoder_start_token_id": 511}
    transformers.MarianMTModel(transformers.MarianConfig(**config)).save_pretrained(str(marian))
    tinytokenizer.write(marian, conv.tokenizer, config)
    (tmp_path / "pairs.tsv").write_text("".join(f"{t}\t{t[::-1]}\n" for t in TEXTS))
    _train_cli(marian, "--data", tmp_path / "pairs.tsv", "--out", tmp_path / "mt", "--steps", 2, "--batch-size", 2,
               "--label-smoothing", 0.1)
    assert transformers.MarianMTModel.from_pretrained(str(tmp_path / "mt")) is not None


def test_image_classification_trains_from_class_folders(tmp_path):
    from PIL import Image

    conv = get_catalog().converter("hf_vit")
    folder = tmp_path / "vit"
    config = {k: v for k, v in conv.tiny_config.items() if k != "architectures"}
    config.update(id2label={0: "dark", 1: "light"}, num_labels=2)
    torch.manual_seed(0)
    transformers.ViTForImageClassification(transformers.ViTConfig(**config)).save_pretrained(str(folder))
    for label, shade in (("dark", 20), ("light", 230)):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 40), (shade + i, shade, shade)).save(tmp_path / "images" / label / f"{i}.png")
    summary = _train_cli(folder, "--data", tmp_path / "images", "--out", tmp_path / "out", "--steps", 2,
                         "--batch-size", 3, "--lr", 1e-3)
    assert summary["task"] == "image-classification" and summary["steps"] == 2
    assert transformers.ViTForImageClassification.from_pretrained(str(tmp_path / "out")) is not None
    (tmp_path / "images" / "purple").mkdir()
    from click.testing import CliRunner

    from zoo.cli import cli

    result = CliRunner().invoke(cli, ["train", str(folder), "--data", str(tmp_path / "images"), "--out",
                                      str(tmp_path / "o2"), "--steps", "1"])
    assert result.exit_code == 2 and "has no label 'purple'" in result.output


def test_bad_options_are_one_line_errors(gpt2, text_file, tmp_path):
    from click.testing import CliRunner

    from zoo.cli import cli

    for args, message in ((["--epochs", "1", "--steps", "2"], "--epochs or --steps"),
                          (["--config", "nonsense"], "KEY=VALUE"),
                          (["--task", "copy"], "the copy task trains an encoder-decoder"),
                          (["--fsdp"], "--fsdp shards the model over processes: run it with --nproc N")):
        result = CliRunner().invoke(cli, ["train", str(gpt2), "--data", str(text_file), "--out", str(tmp_path / "o"),
                                          *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
        assert "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["train", "transformer-base", "--task", "copy", "--data", str(text_file),
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "drop --data" in result.output
    result = CliRunner().invoke(cli, ["train", "transformer-base", "--task", "copy", "--fsdp", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "drop --fsdp" in result.output


# ----------------------------------------------------------------------------- the pieces


def test_label_smoothing_is_the_annotated_transformers_kl_divergence():
    """zoo.losses.label_smoothed_kl against the Annotated Transformer's LabelSmoothing criterion,
    written out here: a target distribution with 1 - s on the label, s / (V - 2) elsewhere, 0 on
    padding and on padding rows; nn.KLDivLoss(reduction="sum") over the tokens, per token."""
    from zoo.losses import label_smoothed_kl

    torch.manual_seed(0)
    V, pad, s = 7, 0, 0.1
    logp = torch.randn(3, 5, V).log_softmax(-1)
    target = torch.randint(1, V, (3, 5))
    target[0, 3:] = pad
    x, t = logp.reshape(-1, V), target.reshape(-1)
    true = torch.full_like(x, s / (V - 2))
    true.scatter_(1, t[:, None], 1 - s)
    true[:, pad] = 0
    true[t == pad] = 0
    want = torch.nn.KLDivLoss(reduction="sum")(x, true) / (t != pad).sum()
    torch.testing.assert_close(label_smoothed_kl(logp, target, s, pad), want)


def test_the_noam_schedule_is_the_annotated_transformers_rate():
    from zoo.training import schedule

    rate = schedule("noam", warmup=400, total=10_000, d_model=512)
    for step in (0, 1, 399, 400, 5000):
        s = step + 1  # the Annotated Transformer counts steps from 1
        assert rate(step) == pytest.approx(512 ** -0.5 * min(s ** -0.5, s * 400 ** -1.5))
    linear = schedule("linear", warmup=10, total=110)
    assert linear(0) == pytest.approx(0.1) and linear(9) == 1 and linear(60) == pytest.approx(0.5)
    assert schedule("constant", warmup=0, total=5)(4) == 1


def test_bfloat16_autocast_trains(gpt2, text_file, tmp_path):
    summary = zoo.train(str(gpt2), data=str(text_file), out=str(tmp_path / "bf16"), steps=3, batch_size=4,
                        lr=3e-3, dtype="bfloat16")
    assert summary["steps"] == 3 and math.isfinite(summary["loss"])
    assert _weights(tmp_path / "bf16")["wte.weight"].dtype == torch.float32  # the weights stay float32


def test_out_never_replaces_what_zoo_did_not_write_nor_what_the_run_reads(gpt2, text_file, tmp_path):
    """--out is checked before any step: a user's folder, the model's own folder and the data's
    are refused and left byte-identical; a previous run's output is replaced only with --force;
    --resume may write back into the folder it continues."""
    def digest(root):
        return {p: p.read_bytes() for p in Path(root).rglob("*") if p.is_file()}

    args = dict(data=str(text_file), steps=2, batch_size=4, schedule="constant")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("years of work")
    before = {**digest(mine), **digest(gpt2), **digest(text_file.parent)}
    for out in (mine, gpt2, text_file.parent):
        with pytest.raises(zoo.errors.ZooError):
            zoo.train(str(gpt2), out=str(out), **args)
    assert {**digest(mine), **digest(gpt2), **digest(text_file.parent)} == before
    run = tmp_path / "run"
    zoo.train(str(gpt2), out=str(run), save_every=1, **args)
    with pytest.raises(zoo.errors.ZooError):  # a finished run's output: only with --force
        zoo.train(str(gpt2), out=str(run), **args)
    zoo.train(str(gpt2), out=str(run), force=True, **args)
    zoo.train(str(gpt2), out=str(run), resume=str(run), **{**args, "steps": 3})  # continues in place
    assert json.loads((run / "trainer_state.json").read_text())["step"] == 3
