"""The ``zoo`` command line: a thin layer over the library.

Library errors become one line on stderr and an exit code (2 bad input, 1 parity failure);
``--debug`` shows the traceback instead. ``zoo --help`` and ``zoo list`` never import torch.
"""
from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Optional

import click

from .errors import ZooError

# exit codes: 0 success, 1 a parity failure (zoo verify), 2 bad input or usage, 3 a bug (in zoo or a
# plugin), 130 interrupted
INTERNAL_ERROR = 3
INTERRUPTED = 130
EPILOG = "Docs: README.md. Models: `zoo list`. Plugins: `zoo plugins`."


# `zoo` or `zoo plugin` alone shows the help, as click does (click >= 8.2 raises this for it)
_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _usage_line(exc: click.UsageError) -> click.ClickException:
    """A usage error (a bad option value, an unknown command) as one line, exit 2."""
    if isinstance(exc, _HELP):
        return exc
    where = exc.ctx.command_path if exc.ctx is not None else "zoo"
    click.echo(f"zoo: error: {exc.format_message()} (see '{where} --help')", err=True)
    return click.exceptions.Exit(exc.exit_code)


class ZooGroup(click.Group):
    """Turns library errors and usage errors into one-line messages and exit codes."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:  # an option of `zoo` itself
            raise _usage_line(exc) from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _usage_line(exc) from None
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except ZooError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            click.echo(f"zoo: error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("zoo: interrupted", err=True)
            ctx.exit(INTERRUPTED)
        except BrokenPipeError:  # `zoo info x | head`: the reader left; stop quietly
            try:  # later flushes of stdout (at exit) must not raise again
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):
                pass
            ctx.exit(141)
        except Exception as exc:  # a bug: say so, in one line unless --debug
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            click.echo(f"zoo: internal error: {exc.__class__.__name__}: {exc} (rerun with --debug)", err=True)
            ctx.exit(INTERNAL_ERROR)


@click.group(cls=ZooGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.version_option(package_name="zoo", prog_name="zoo")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """zoo: a model zoo with a weight-conversion registry.

    List, load, verify and run transformer checkpoints (GPT-2, BERT, ViT, encoder-decoders)
    through architecture and converter plugins.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _fmt_params(n: Optional[int]) -> str:
    if not n:
        return "-"
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}" if n < 10 * div else f"{n / div:.0f}{unit}"
    return str(n)


def _table(rows, headers) -> str:
    widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(len(headers))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
    return "\n".join([line(headers)] + [line(r) for r in rows])


@cli.command("list")
@click.argument("patterns", nargs=-1)
@click.option("--exclude", multiple=True, metavar="PATTERN", help="Leave out names matching PATTERN.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def list_cmd(patterns, exclude, as_json):
    """List catalog entries, optionally filtered by fnmatch PATTERNS (e.g. 'gpt2*')."""
    from .registry import get_catalog

    entries = get_catalog().list(patterns, exclude)
    if as_json:
        click.echo(json.dumps([
            {
                "name": e.name,
                "architecture": e.architecture,
                "converter": e.converter,
                "task": e.task,
                "params": e.params,
                "repo": e.repo,
                "revision": e.revision,
                "aliases": list(e.aliases),
                "description": e.description,
                "origin": e.origin,
            }
            for e in entries
        ], indent=2))
        return
    if not entries:
        click.echo("no models match" + (f" {' '.join(patterns)}" if patterns else ""), err=True)
        sys.exit(1)
    rows = [(e.name, e.architecture, e.task, _fmt_params(e.params), e.source) for e in entries]
    click.echo(_table(rows, ("NAME", "ARCHITECTURE", "TASK", "PARAMS", "SOURCE")))


@cli.command()
@click.argument("name")
@click.option("--task", "task_name", default=None, metavar="T", help="Describe the model built for task T.")
@click.option("--allow-pickle", is_flag=True, help="Read a pickled checkpoint folder (torch.load, weights_only).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(name, task_name, allow_pickle, as_json):
    """Show what zoo knows of NAME: a catalog entry, or a checkpoint folder or file (its
    architecture, task, config, tensors, size, and what loading would drop)."""
    from .describe import describe

    data = describe(name, task=task_name, allow_pickle=allow_pickle)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for key in ("name", "description", "architecture", "converter", "task", "repo", "revision", "params", "origin"):
        value = data[key]
        if key == "params" and value:
            value = f"{value:,} ({_fmt_params(value)})"
        click.echo(f"{key:13} {value if value not in (None, '') else '-'}")
    click.echo(f"{'tasks':13} {', '.join(data['tasks'])}")
    click.echo(f"{'aliases':13} {', '.join(data['aliases']) or '-'}")
    if data["repo"] and "files" not in data:
        where = data["cached"] or "no: downloaded on first use (offline: --random-weights runs it on seeded random weights)"
        click.echo(f"{'cached':13} {where}")
    if "files" in data:
        click.echo(f"{'files':13} {', '.join(Path(f).name for f in data['files'])} ({data['format']})")
        dtypes = ", ".join(f"{n} {dt}" for dt, n in data["dtypes"].items())
        click.echo(f"{'tensors':13} {data['tensors']} ({dtypes}); {_fmt_bytes(data['tensor_bytes'])}, "
                   f"{_fmt_bytes(data['size_on_disk'])} on disk")
        acc = data["accounting"]
        if acc.get("loads") is False:
            click.echo(f"{'loading':13} fails: {acc['problem']}")
        else:
            click.echo(f"{'loading':13} {acc['loaded']} tensors load")
            for why, n in acc["dropped"].items():
                click.echo(f"{'':13} {n} dropped: {why}")
    if data["labels"]:
        click.echo(f"{'labels':13} {data['labels']['count']}: {data['labels']['source']}")
    for key, item in data["ignored_fields"].items():
        click.echo(f"{'ignored':13} {key} = {json.dumps(item['value'])}: {item['read_as']}")
    click.echo("config")
    for k, v in data["config"].items():
        click.echo(f"  {k} = {json.dumps(v)}")
    if data["preprocessing"]:
        click.echo("preprocessing")
        for k, v in data["preprocessing"].items():
            click.echo(f"  {k} = {json.dumps(v)}")


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins(as_json):
    """List plugins: distribution, version, what each registered, load errors."""
    from . import pluginmanager
    from .registry import get_catalog

    get_catalog()  # registers catalog entries so errors in them are reported too
    infos = list(pluginmanager.get_plugins().infos.values())
    if as_json:
        click.echo(json.dumps([i.as_dict() for i in infos], indent=2))
        return
    for i in infos:
        dist = f"{i.distribution} {i.version}" if i.distribution else "(in-process)"
        status = "ok" if i.loaded and not i.errors else "ERROR"
        click.echo(f"{i.name:16} {dist:20} {status}")
        for kind, names in sorted(i.registered.items()):
            click.echo(f"  {kind + 's':14} {', '.join(names)}")
        for err in i.errors:
            click.echo(f"  error          {err}")


class FiniteFloat(click.FloatRange):
    """A float option within a range, NaN and infinity refused (click's FloatRange lets NaN by)."""

    name = "float"

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        if value != value or value in (float("inf"), float("-inf")):
            self.fail(f"{value} is not a finite number.", param, ctx)
        return value


SEED = click.IntRange(0, 2**63 - 1)
COUNT = click.IntRange(min=1)  # beams, tokens, batch, repeats: one or more


def _device_options(f):
    f = click.option("--dtype", default=None, help="float32 (default), bfloat16 or float16.")(f)
    f = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")(f)
    return f


DEVICE_MAP = click.option(
    "--device-map", type=click.Choice(["auto", "balanced", "sequential"]), default=None,
    help="Spread a model too large for one device over the GPUs, CPU and disk with accelerate "
         "(pip install 'zoo[big]'); no fast paths then.")


@cli.command()
@click.argument("name_or_path")
@click.option("--checkpoint", type=click.Path(exists=True), help="Local checkpoint folder or file to use.")
@_device_options
@DEVICE_MAP
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed for random weights and inputs.")
@click.option("--beams", default=1, show_default=True, type=COUNT, help="Also compare beam search with N beams.")
@click.option("--random-weights", is_flag=True, help="Use seeded random weights even if a checkpoint is cached.")
@click.option("--allow-pickle", is_flag=True, help="Read .bin pickles (weights_only=True).")
@click.option("--plain", is_flag=True, help="Check the plain model only (no fast paths).")
@click.option("--train", is_flag=True, help="Check the training loss and every parameter's gradient instead.")
@click.option("--task", "task_name", default=None, metavar="T",
              help="The model built for task T (its head, or the body alone) instead of the checkpoint's own.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify(name_or_path, checkpoint, device, dtype, device_map, seed, beams, random_weights, allow_pickle, plain,
           task_name, train, as_json):
    """Check numerical parity with transformers on the same weights: the model with its fast
    paths, then the plain model (--train: the training loss and every gradient).

    Exit code 0 when outputs agree within tolerance, 1 when they do not, 2 on bad input.
    """
    from . import progress
    from .verification import verify as run_verify

    progress.enable(not as_json)
    if train:
        ctx = click.get_current_context()
        given = [f"--{n.replace('_', '-')}" for n in ("device", "dtype", "device_map", "beams", "plain")
                 if ctx.get_parameter_source(n) is click.core.ParameterSource.COMMANDLINE]
        if given:
            raise click.UsageError(f"{given[0]} does not apply to --train (CPU float32, the plain product)")
        from .trainverify import verify_training

        result = verify_training(name_or_path, checkpoint=checkpoint, seed=seed, allow_pickle=allow_pickle,
                                 random_weights=random_weights, task=task_name)
        click.echo(result.to_json() if as_json else result.render())
        sys.exit(0 if result.passed else 1)

    report = run_verify(
        name_or_path,
        checkpoint=checkpoint,
        device=device,
        dtype=dtype,
        device_map=device_map,
        seed=seed,
        num_beams=beams,
        random_weights=random_weights,
        allow_pickle=allow_pickle,
        plain=plain,
        task=task_name,
    )
    click.echo(report.to_json() if as_json else report.render())
    sys.exit(0 if report.passed else 1)


@cli.command()
@click.argument("name_or_path")
@click.argument("inputs", nargs=-1)
@click.option("--checkpoint", type=click.Path(exists=True), help="Local checkpoint folder or file to use.")
@_device_options
@DEVICE_MAP
@click.option("--max-new-tokens", type=COUNT, default=None,
              help="Tokens to generate. Default: the checkpoint's (max_new_tokens or max_length in its "
                   "generation_config.json), else 32.")
@click.option("--temperature", type=FiniteFloat(min=0), default=None,
              help="Sampling temperature; 0: greedy. Unset: the checkpoint's (do_sample and temperature "
                   "in its generation_config.json), else greedy.")
@click.option("--top-k", type=click.IntRange(min=0), default=None,
              help="Sample only among the K most likely tokens (0: all).")
@click.option("--top-p", type=FiniteFloat(0, 1, min_open=True), default=None,
              help="Sample only among the most likely tokens whose probabilities sum to P (nucleus).")
@click.option("--seed", type=SEED, default=None, help="Seed for sampling.")
@click.option("--ids", default=None, help="Token ids, comma-separated, instead of text.")
@click.option("--beams", type=COUNT, default=None,
              help="Beam search width (text generation, translation). Default: the checkpoint's num_beams "
                   "(generation_config.json), else 1.")
@click.option("--embed", is_flag=True, help="Print a sentence embedding instead (encoders).")
@click.option("--random-weights", is_flag=True,
              help="Seeded random weights in the Hub's layout instead of the checkpoint (no download; outputs mean nothing).")
@click.option("--task", "task_name", default=None, metavar="T",
              help="Run task T (any registered one, see `zoo plugins`) instead of the model's own.")
@click.option("--top", default=5, show_default=True, type=COUNT, help="How many candidates/labels/answers to show.")
@click.option("--question", default=None, metavar="Q", help="Question answering: the question (INPUT is the context).")
@click.option("--allow-pickle", is_flag=True, help="Read .bin pickles (weights_only=True).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def run(ctx, name_or_path, inputs, checkpoint, device, dtype, device_map, max_new_tokens, temperature, top_k, top_p,
        seed, ids, beams, embed, random_weights, task_name, top, question, allow_pickle, as_json):
    """Run a model on INPUTS (a prompt, a sentence, an image file ...)."""
    from . import progress
    from .tasks import parse_ids, run as run_task

    progress.enable(not as_json)
    values = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k, "top_p": top_p,
              "seed": seed, "ids": parse_ids(ids) if ids is not None else None, "beams": beams, "embed": embed,
              "top": top, "question": question}
    # the options given on the command line: each must be one the task reads
    options = {name: value for name, value in values.items()
               if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE}

    def loaded_(loaded):
        if random_weights:
            click.echo("zoo: random weights (seed 0), not the checkpoint's: the outputs mean nothing", err=True)
        click.echo(f"zoo: {loaded.entry.name} on {loaded.device} ({str(loaded.dtype).replace('torch.', '')})",
                   err=True)

    result = run_task(name_or_path, *inputs, task=task_name, checkpoint=checkpoint, device=device, dtype=dtype,
                      device_map=device_map, allow_pickle=allow_pickle, random_weights=random_weights, on_loaded=loaded_,
                      emit=None if as_json else (lambda text: click.echo(text, nl=False)), **options)
    if as_json:
        click.echo(json.dumps(result, indent=2))


@cli.command()
@click.argument("name_or_path")
@click.option("--checkpoint", type=click.Path(exists=True), help="Local checkpoint folder to use.")
@_device_options
@click.option("--batch", default=1, show_default=True, type=COUNT, help="Batch size.")
@click.option("--seq", default=128, show_default=True, type=COUNT, help="Sequence length (tokens) of the forward pass.")
@click.option("--new-tokens", default=64, show_default=True, type=COUNT, help="Tokens to decode (generative models).")
@click.option("--prompt", default=16, show_default=True, type=COUNT, help="Prompt tokens before decoding (decoder-only models).")
@click.option("--beams", default=1, show_default=True, type=COUNT, help="Decode with beam search of N beams (1: greedy).")
@click.option("--repeats", default=5, show_default=True, type=COUNT, help="Timed repeats (A/B interleaved); decoding takes half as many, at least 3.")
@click.option("--compare", is_flag=True, help="Run transformers side by side on the same weights.")
@click.option("--cold", is_flag=True, help="Also time a fresh process: import, load, first output; peak RSS.")
@click.option("--scaling", is_flag=True, help="Also show how time grows with sequence, batch and context.")
@click.option("--train", is_flag=True, help="Also time a training step (forward + backward + AdamW); with --cold, its peak memory.")
@click.option("--onnx", is_flag=True,
              help="Also time the forward against ONNX Runtime running zoo's ONNX export (CPU, float32; zoo[onnx]).")
@click.option("--task", "task_name", default=None, metavar="T",
              help="The model built for task T (its head, or the body alone) instead of the checkpoint's own.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def bench(name_or_path, checkpoint, device, dtype, batch, seq, new_tokens, prompt, beams, repeats, compare, cold,
          scaling, task_name, train, onnx, as_json):
    """Measure load, forward and decode speed (and with --compare, ratios to transformers)."""
    from . import progress
    from .bench import bench as run_bench

    progress.enable(not as_json)
    report = run_bench(name_or_path, checkpoint=checkpoint, device=device, dtype=dtype, batch=batch, seq=seq,
                       new_tokens=new_tokens, prompt=prompt, num_beams=beams, repeats=repeats, compare=compare,
                       cold=cold, scaling=scaling, task=task_name, train=train, onnx=onnx)
    click.echo(report.to_json() if as_json else report.render())


@cli.command("convert")
@click.argument("name_or_path")
@click.option("--to", "to", type=click.Choice(["hf", "zoo", "onnx"]), required=True,
              help="hf: config.json + model.safetensors in the Hub layout; zoo: zoo-native safetensors + zoo.json; "
                   "onnx: the forward as an ONNX graph, checked in ONNX Runtime (pip install 'zoo[onnx]').")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--force", is_flag=True, help="Replace an existing, non-empty output folder.")
@click.option("--checkpoint", type=click.Path(exists=True), help="Local checkpoint folder or file to read.")
@click.option("--allow-pickle", is_flag=True, help="Read .bin pickles (weights_only=True).")
@click.option("--random-weights", is_flag=True,
              help="Seeded random weights in the Hub's layout instead of the checkpoint (no download).")
@click.option("--task", "task_name", default=None, metavar="T",
              help="The model built for task T (its head, or the body alone) instead of the checkpoint's own.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def convert_cmd(name_or_path, to, out, force, checkpoint, allow_pickle, random_weights, task_name, as_json):
    """Write a checkpoint as a Hugging Face folder (--to hf), zoo-native files (--to zoo) or an
    ONNX graph (--to onnx).

    Export reads the converter's key map backwards: HF -> zoo -> HF gives the same keys and
    bit-identical tensors. Files are written to a temporary folder and renamed into place.
    """
    from . import progress

    progress.enable(not as_json)
    read = dict(force=force, checkpoint=checkpoint, allow_pickle=allow_pickle, random_weights=random_weights,
                task=task_name)
    if to == "onnx":
        from .onnxexport import export_onnx

        result = export_onnx(name_or_path, out, **read)
    else:
        from .export import convert_checkpoint

        result = convert_checkpoint(name_or_path, to, out, **read)
    if random_weights:
        click.echo("zoo: random weights (seed 0), not the checkpoint's", err=True)
    click.echo(json.dumps(result.as_dict(), indent=2) if as_json else result.render())


def _config_pair(ctx, param, values):
    """``--config KEY=VALUE`` (repeatable): a config override, the value read as JSON when it is."""
    out = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: write KEY=VALUE (e.g. layers=2)")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


@cli.command("train")
@click.argument("name_or_path")
@click.option("--data", default=None, metavar="FILE_OR_DIR",
              help="Training data: .txt/.jsonl (text), .tsv/.jsonl (translation), .jsonl (text classification), "
                   "a folder of class folders (images). The copy task makes its own.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Where the checkpoint is written.")
@click.option("--task", "task", default=None, metavar="T",
              help="text-generation, fill-mask, translation, text-classification, image-classification, or copy "
                   "(the Annotated Transformer's copy task). Default: the model's own.")
@click.option("--epochs", type=COUNT, default=None, help="Passes over the data (default 1).")
@click.option("--steps", type=COUNT, default=None, help="Optimizer steps, instead of --epochs.")
@click.option("--batch-size", type=COUNT, default=8, show_default=True, help="Examples per batch (per process).")
@click.option("--grad-accum", type=COUNT, default=1, show_default=True, help="Batches per optimizer step.")
@click.option("--lr", type=FiniteFloat(min=0, min_open=True), default=5e-5, show_default=True,
              help="Learning rate (with --schedule noam: the factor).")
@click.option("--warmup", type=click.IntRange(min=0), default=0, show_default=True, help="Warm-up steps.")
@click.option("--schedule", type=click.Choice(["constant", "linear", "noam"]), default="linear", show_default=True,
              help="Learning rate after warm-up: constant, linear decay to 0, or the Annotated Transformer's noam.")
@click.option("--label-smoothing", type=FiniteFloat(0, 1, max_open=True), default=0.0, show_default=True,
              help="Label smoothing of per-token losses.")
@click.option("--weight-decay", type=FiniteFloat(min=0), default=0.0, show_default=True, help="AdamW weight decay.")
@click.option("--max-length", type=COUNT, default=128, show_default=True, help="Tokens per example at most.")
@click.option("--eval", "eval_data", default=None, metavar="FILE", help="Data to report the loss on at the end.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed: two runs with one seed are identical.")
@_device_options
@click.option("--clip", type=FiniteFloat(min=0, min_open=True), default=1.0, show_default=True,
              help="Clip the gradient norm to this.")
@click.option("--save-every", type=COUNT, default=None, help="Also save (for --resume) every N steps.")
@click.option("--resume", default=None, type=click.Path(exists=True, file_okay=False),
              help="Continue from a checkpoint this command wrote (--out may be that folder).")
@click.option("--force", is_flag=True, help="Replace an existing --out folder that zoo wrote.")
@click.option("--config", "config", multiple=True, callback=_config_pair, metavar="KEY=VALUE",
              help="Config override of the model to build (repeatable), e.g. --config N=2 for transformer-base.")
@click.option("--nproc", type=COUNT, default=None,
              help="Train with N processes on this machine (torch.distributed's own launcher, torchrun).")
@click.option("--fsdp", is_flag=True,
              help="Shard the model, its gradients and optimizer state over the processes (FSDP) instead of "
                   "copying it to each.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def train_cmd(name_or_path, data, out, task, epochs, steps, batch_size, grad_accum, lr, warmup, schedule,
              label_smoothing, weight_decay, max_length, eval_data, seed, device, dtype, clip, save_every, resume,
              force, config, nproc, fsdp, as_json):
    """Train or fine-tune a model; the checkpoint in --out loads in zoo and transformers.

    On several processes: --nproc N here, or `torchrun --nproc-per-node N -m zoo train ...`
    (and torchrun's rendezvous flags for several machines).
    """
    from . import progress
    from .training import main_summary, train

    if nproc and nproc > 1:  # the same command, once per process, under torch.distributed's launcher
        import subprocess

        ctx = click.get_current_context()
        argv = ["train", name_or_path]
        for param in ctx.command.params:
            if param.name in ("name_or_path", "nproc") or \
                    ctx.get_parameter_source(param.name) is not click.core.ParameterSource.COMMANDLINE:
                continue
            flag = max(param.opts, key=len)
            if param.is_flag:
                argv.append(flag)
            elif param.name == "config":
                argv += [x for k, v in config.items() for x in (flag, f"{k}={json.dumps(v)}")]
            else:
                argv += [flag, str(ctx.params[param.name])]
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                               "-m", "zoo", *argv])
        sys.exit(done.returncode)
    progress.enable(not as_json)
    summary = train(name_or_path, data=data, out=out, task=task, epochs=epochs, steps=steps, batch_size=batch_size,
                    grad_accum=grad_accum, lr=lr, warmup=warmup, schedule=schedule, label_smoothing=label_smoothing,
                    weight_decay=weight_decay, max_length=max_length, eval=eval_data, seed=seed, device=device,
                    dtype=dtype, clip=clip, save_every=save_every, resume=resume, force=force, config=config,
                    fsdp=fsdp)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        for line in main_summary(summary):
            click.echo(line)


@cli.group("plugin")
def plugin_group():
    """Tools for plugin authors (see docs/plugins.md)."""


@plugin_group.command("new")
@click.argument("name")
@click.option("--dir", "parent", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Where to create the package folder zoo-NAME.")
@click.option("--force", is_flag=True, help="Replace an existing, non-empty package folder.")
def plugin_new(name, parent, force):
    """Write a minimal installable plugin package zoo-NAME: pyproject with the zoo entry point,
    one architecture, one converter, one catalog entry, and tests using zoo.testing."""
    from .scaffold import new_plugin

    folder = new_plugin(name, parent, force=force)
    click.echo(f"created {folder}")
    click.echo(f"next: pip install -e {folder} && python -m pytest {folder}/tests")


def main() -> None:
    from . import pluginmanager

    try:
        pluginmanager.register_commands(cli)
    except ZooError as exc:  # strict mode
        click.echo(f"zoo: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:  # while plugins load
        click.echo("zoo: interrupted", err=True)
        sys.exit(INTERRUPTED)
    cli(prog_name="zoo")


if __name__ == "__main__":  # pragma: no cover
    main()
