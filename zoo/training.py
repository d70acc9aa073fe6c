"""``zoo train``: fine-tune (or train from scratch) a model zoo loads, on one process or many.

The loop, top to bottom (:func:`train`):

1. **Processes**: under ``torchrun`` (``WORLD_SIZE`` > 1) torch.distributed starts (gloo on the
   CPU, nccl on CUDA) and the model is wrapped in ``DistributedDataParallel``, or with ``--fsdp``
   sharded by FSDP (:func:`shard`: each process holds a slice of every parameter, gradient and
   optimizer state); each rank reads its shard of the data (``DistributedSampler``), rank 0
   alone writes and shows progress.
2. **Model**: ``zoo.load`` of the name or folder for the task (a catalog entry without weights,
   such as ``transformer-base``, starts from its fresh initialization), with the speed layer
   (its padding skip and class-token block stay on in training; the plain model under FSDP),
   then ``train()`` with gradients on. ``--resume DIR`` loads the weights saved there instead,
   and the optimizer, schedule, random state and position in the data saved beside them.
3. **Data** (:mod:`zoo.trainingdata`): every record read and checked before the first step.
4. **Optimizer and schedule**: AdamW (no weight decay on biases and norms);
   ``constant`` or ``linear`` after a linear warm-up, or ``noam``, the Annotated Transformer's
   ``lr · d_model^-0.5 · min(step^-0.5, step · warmup^-1.5)`` (with Adam's betas (0.9, 0.98)).
5. **Steps**: forward with labels, the model's own loss (:mod:`zoo.losses`; with
   ``--label-smoothing``, cross-entropy with smoothing, or for a model that returns
   log-probabilities the Annotated Transformer's KL divergence), backward, ``--grad-accum``
   batches per step, gradients clipped to ``--clip``, ``--dtype bfloat16`` under autocast.
6. **Checkpoints**: every ``--save-every`` steps and at the end, ``--out`` receives the model in
   the Hugging Face layout (what ``zoo convert --to hf`` writes, tokenizer files copied; zoo's
   own layout for a format without a transformers class), ``trainer_state.json`` (step, epoch,
   losses, learning rates, seed, sha256 of the data) and ``train_state.pt`` (optimizer,
   schedule, random states) for ``--resume``. Each save is written aside and renamed into place
   (:func:`zoo.publish.publish`): a killed run never leaves a half-written checkpoint.

The pieces (:func:`schedule`, :func:`loss_of`, the datasets' ``collate``) serve a loop of your own.
"""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from . import checkpoint as ckpt
from . import losses, progress
from .errors import InputError
from .trainingdata import Dataset, load_dataset

SCHEDULES = ("constant", "linear", "noam")


@dataclass
class TrainOptions:
    """Every ``zoo train`` option (see ``zoo train --help``)."""

    out: str
    data: Optional[str] = None
    task: Optional[str] = None
    epochs: Optional[int] = None
    steps: Optional[int] = None
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 5e-5
    warmup: int = 0
    schedule: str = "linear"
    label_smoothing: float = 0.0
    weight_decay: float = 0.0
    max_length: int = 128
    eval: Optional[str] = None
    seed: int = 0
    device: Optional[str] = "auto"
    dtype: Optional[str] = None
    clip: Optional[float] = 1.0
    save_every: Optional[int] = None
    resume: Optional[str] = None
    force: bool = False
    config: Dict[str, Any] = field(default_factory=dict)  # config overrides (e.g. layers=2)
    fsdp: bool = False  # shard the model over the processes instead of replicating it

    def check(self) -> None:
        if self.epochs is not None and self.steps is not None:
            raise InputError("--epochs or --steps: give one of them")
        for name in ("epochs", "steps", "batch_size", "grad_accum", "max_length", "save_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.schedule not in SCHEDULES:
            raise InputError(f"--schedule {self.schedule!r} (schedules: {', '.join(SCHEDULES)})")
        if not 0 <= self.label_smoothing < 1:
            raise InputError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.lr <= 0 or self.warmup < 0 or self.weight_decay < 0:
            raise InputError("--lr must be > 0, --warmup and --weight-decay >= 0")


# ----------------------------------------------------------------------------- pieces


def schedule(name: str, warmup: int, total: int, d_model: int = 512) -> Callable[[int], float]:
    """The factor on the base learning rate at optimizer step ``step`` (0-based) of ``total``."""
    if name == "noam":  # the base lr is the Annotated Transformer's "factor"
        def noam(step: int) -> float:
            s = step + 1
            return d_model ** -0.5 * min(s ** -0.5, s * max(warmup, 1) ** -1.5)
        return noam

    def warm_then(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if name == "constant":
            return 1.0
        return max(0.0, (total - step) / max(1, total - warmup))
    return warm_then


def loss_of(model, out, batch: Dict[str, torch.Tensor], task: str, smoothing: float, pad_id: int):
    """The loss to minimize: the model's own (transformers' for the matching class), or with
    ``smoothing``, the label-smoothed one of the per-token outputs."""
    if not smoothing or task not in ("translation", "copy", "text-generation", "fill-mask"):
        if out.loss is None:
            raise InputError(f"the model returns no loss for {task} (its forward takes no labels)")
        return out.loss
    labels = batch["labels"]
    if task == "text-generation":
        return losses.causal_lm(out.logits, labels, smoothing)
    config = getattr(getattr(model, "config", None), "log_softmax_output", False)
    if config:  # the model gives log-probabilities: the Annotated Transformer's smoothing
        return losses.label_smoothed_kl(out.logits, labels, smoothing, pad_id)
    return losses.token_cross_entropy(out.logits, labels, smoothing)


def _param_groups(model, weight_decay: float):
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def _d_model(arch_config: Dict[str, Any]) -> int:
    for key in ("d_model", "n_embd", "hidden_size"):
        if arch_config.get(key):
            return int(arch_config[key])
    return 512


# ----------------------------------------------------------------------------- processes


@dataclass
class Processes:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def shard(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` sharded in place by FSDP (``torch.distributed.fsdp.fully_shard``): each block
    (every item of an ``nn.ModuleList`` that is in no other block, :func:`zoo.placement.blocks`)
    is one unit, gathered for its forward and backward only, and the rest (embeddings, norms,
    heads, and so a tied head with its embedding) one unit at the top. The parameters become
    sharded ``DTensor``\ s: build the optimizer after this."""
    from torch.distributed.fsdp import fully_shard

    from .placement import blocks

    for _, block in blocks(model):
        fully_shard(block)
    fully_shard(model)
    return model


def _start_processes(device: str) -> Processes:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Processes()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return Processes(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


# ----------------------------------------------------------------------------- the loop


def train(name_or_path: str, **options: Any) -> Dict[str, Any]:
    """Train ``name_or_path`` as :class:`TrainOptions` says; returns the summary ``--json``
    prints (steps, epochs, final and mean losses, eval loss, what was written)."""
    from torch.utils.data import DataLoader, DistributedSampler

    from .loading import load_full

    unknown = sorted(set(options) - {f for f in TrainOptions.__dataclass_fields__})
    if unknown:
        raise InputError(f"zoo.train() got an unexpected keyword {unknown[0]!r}")
    opts = TrainOptions(**options)
    opts.check()
    built_task = "translation" if opts.task == "copy" else opts.task
    if opts.task == "copy":
        from .loading import resolve
        from .registry import get_catalog

        arch = get_catalog().architecture(resolve(str(opts.resume or name_or_path)).architecture)
        if "translation" not in arch.tasks:
            raise InputError(f"the copy task trains an encoder-decoder; {name_or_path} is a {arch.name} model")
        if opts.data is not None:
            raise InputError("the copy task makes its own data: drop --data")
    device = opts.device
    procs = _start_processes(str(device or "cpu"))
    if procs.world > 1 and (device in (None, "auto")):
        device = f"cuda:{procs.local_rank}" if torch.cuda.is_available() else "cpu"
    if opts.fsdp and opts.task == "copy":
        raise InputError("the copy task's held-out check decodes step by step, outside the forward that FSDP "
                         "gathers the weights for: drop --fsdp")
    if opts.fsdp and procs.world < 2:
        raise InputError("--fsdp shards the model over processes: run it with --nproc N (N >= 2) or under torchrun")
    torch.manual_seed(opts.seed)

    source = opts.resume or name_or_path
    loaded = load_full(source, device=device, task=built_task, fast=not opts.fsdp,
                       config_overrides=opts.config or None)
    task = opts.task or loaded.task
    model = loaded.model
    model.train().requires_grad_(True)
    data = load_dataset(loaded, task, opts.data, opts.max_length, opts.seed)
    eval_data = load_dataset(loaded, task, opts.eval, opts.max_length, opts.seed + 1) if opts.eval else None
    save = _Saver(opts, loaded, data, eval_data, procs)  # --out checked now, not after hours of training

    sampler = DistributedSampler(data, num_replicas=procs.world, rank=procs.rank, shuffle=True, seed=opts.seed)
    loader = DataLoader(data, batch_size=opts.batch_size, sampler=sampler, collate_fn=data.collate)
    per_epoch = max(1, math.ceil(len(loader) / opts.grad_accum))
    total = opts.steps or per_epoch * (opts.epochs or 1)

    net = model
    if opts.fsdp:
        net = model = shard(model)
    elif procs.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model)
    betas = (0.9, 0.98) if opts.schedule == "noam" else (0.9, 0.999)
    eps = 1e-9 if opts.schedule == "noam" else 1e-8
    optimizer = torch.optim.AdamW(_param_groups(model, opts.weight_decay), lr=opts.lr, betas=betas, eps=eps)
    lr_factor = schedule(opts.schedule, opts.warmup, total, _d_model(loaded.arch_config))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)

    state = {"step": 0, "epoch": 0, "batch": 0, "losses": [], "lrs": []}
    if opts.resume:
        state = _restore(Path(opts.resume), model, optimizer, scheduler, data, opts.fsdp)
    pad_id = int(loaded.arch_config.get("pad_token_id") or 0)
    autocast = (torch.autocast(loaded.device.type, dtype=torch.bfloat16) if opts.dtype in ("bfloat16", "bf16")
                else nullcontext())
    t0, tokens = time.perf_counter(), 0
    with progress.bar(total - state["step"], "training", unit="step") as bar:
        while state["step"] < total:
            sampler.set_epoch(state["epoch"])
            for i, batch in enumerate(loader):
                if i < state["batch"]:
                    continue  # done before a resume
                batch = {k: v.to(loaded.device) for k, v in batch.items()}
                with autocast:
                    out = net(**batch)
                    loss = loss_of(model, out, batch, task, opts.label_smoothing, pad_id) / opts.grad_accum
                loss.backward()
                tokens += int(batch["input_ids"].numel()) if "input_ids" in batch else len(batch["labels"])
                state["batch"] = i + 1
                if state["batch"] % opts.grad_accum and state["batch"] != len(loader):
                    continue
                if opts.clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), opts.clip)
                state["lrs"].append(scheduler.get_last_lr()[0])
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state["step"] += 1
                state["losses"].append(float(loss.detach()) * opts.grad_accum)
                if bar is not None and procs.main:
                    bar.update()
                    bar.set_postfix(loss=f"{state['losses'][-1]:.4f}", lr=f"{state['lrs'][-1]:.2e}",
                                    tok_s=f"{tokens / (time.perf_counter() - t0):.0f}")
                if opts.save_every and state["step"] % opts.save_every == 0 and state["step"] < total:
                    save(model, optimizer, scheduler, state)
                if state["step"] >= total:
                    break
            else:
                state["epoch"] += 1
                state["batch"] = 0
                continue
            break
    model.eval()
    summary = {"model": loaded.entry.name, "task": task, "steps": state["step"], "epochs": state["epoch"],
               "loss": state["losses"][-1] if state["losses"] else None,
               "mean_loss_last_10": sum(state["losses"][-10:]) / max(1, len(state["losses"][-10:])),
               "seconds": round(time.perf_counter() - t0, 3), "processes": procs.world, "out": str(opts.out)}
    if eval_data is not None:
        summary["eval_loss"] = evaluate(model, eval_data, task, opts.batch_size)
    if task == "copy":
        summary["copy_accuracy"] = copy_accuracy(model, loaded.arch_config, opts.seed + 7)
    save(model, optimizer, scheduler, state, summary)
    if procs.world > 1:
        import torch.distributed as dist

        dist.barrier()
    return summary


def evaluate(model, data: Dataset, task: str, batch_size: int) -> float:
    """The mean loss over ``data`` (eval mode, no gradients)."""
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        device = next(model.parameters()).device
        for start in range(0, len(data), batch_size):
            batch = {k: v.to(device) for k, v in data.collate(data.records[start:start + batch_size]).items()}
            total += float(model(**batch).loss) * len(batch["labels"])
            n += len(batch["labels"])
    return total / max(1, n)


def copy_accuracy(model, arch_config: Dict[str, Any], seed: int, n: int = 20, length: int = 10) -> float:
    """The fraction of ``n`` held-out random sequences that greedy decoding copies exactly."""
    from .trainingdata import copy_dataset

    data = copy_dataset(arch_config, n, length, seed)
    src = torch.tensor(data.records)
    with torch.no_grad():
        out = model.generate(src, attention_mask=torch.ones_like(src), max_new_tokens=length, num_beams=1)
    copied = out[:, 1:1 + length]
    if copied.shape != src.shape:  # stopped early: not a copy
        return 0.0
    return float((copied == src).all(dim=1).float().mean())


# ----------------------------------------------------------------------------- checkpoints


class _Saver:
    """Writes the checkpoints of one run to ``--out`` (rank 0 only), each aside and renamed
    into place (:func:`zoo.publish.publish`). ``--out`` may not overlap what the run reads (the
    model's folder, the data), except the ``--resume`` folder it continues; an existing ``--out``
    is replaced only with ``--force`` (and then only if zoo wrote it), or when it is that
    ``--resume`` folder. Once the run has saved, later saves replace its own output."""

    def __init__(self, opts, loaded, data: Dataset, eval_data: Optional[Dataset], procs: Processes):
        from .publish import check_target

        self.opts, self.loaded, self.data, self.procs = opts, loaded, data, procs
        same = opts.resume is not None and os.path.realpath(opts.resume) == os.path.realpath(opts.out)
        reads = list(data.files) + (list(eval_data.files) if eval_data is not None else [])
        if loaded.folder is not None and not same:
            reads.append(Path(loaded.folder))
        self.inputs = reads
        self.force = opts.force or same
        if procs.main:
            check_target(opts.out, force=self.force, inputs=self.inputs)

    def __call__(self, model, optimizer, scheduler, state, summary=None) -> None:
        model_state, optimizer_state = _whole_state(model, optimizer, self.opts.fsdp)
        if not self.procs.main:
            return
        from .export import Source, hf_writer, zoo_writer
        from .publish import publish

        opts, loaded, data = self.opts, self.loaded, self.data
        weights = {k: v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu()
                   for k, v in model_state.items()}
        provenance = {"trained_from": str(opts.resume or loaded.entry.name), "step": state["step"]}
        source = Source(weights, loaded.converter, loaded.architecture.name, loaded.task, dict(loaded.config),
                        provenance, [], loaded.folder)
        writer = hf_writer(source)[0] if loaded.converter.reference is not None else zoo_writer(source)
        trainer_state = {
            "step": state["step"], "epoch": state["epoch"], "batch": state["batch"], "losses": state["losses"],
            "learning_rates": state["lrs"], "seed": opts.seed, "options": {**asdict(opts)},
            "data": {str(p): ckpt.sha256(p) for p in data.files[:1000]},
            "summary": summary,
        }
        resume = {"optimizer": optimizer_state, "fsdp": opts.fsdp, "scheduler": scheduler.state_dict(),
                  "rng": torch.get_rng_state(), "data_rng": data.rng.get_state() if data.rng is not None else None}
        if torch.cuda.is_available():
            resume["cuda_rng"] = torch.cuda.get_rng_state_all()

        def write(folder: Path) -> None:
            writer(folder)
            (folder / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2, default=str) + "\n")
            torch.save(resume, folder / "train_state.pt")

        publish(opts.out, write, force=self.force, inputs=self.inputs)
        self.force = True  # the run's own output from now on


def _whole_state(model, optimizer, sharded: bool):
    """The model's state dict and the optimizer's, whole. Under FSDP they are gathered from
    every process onto the CPU of rank 0 (a collective: every rank calls this; the others get
    empty dicts), the optimizer's keyed by parameter name."""
    if not sharded:
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options), get_optimizer_state_dict(model, optimizer, options=options)


def _restore(folder: Path, model, optimizer, scheduler, data: Dataset, sharded: bool = False) -> Dict[str, Any]:
    """The loop's position and the optimizer, schedule and random states saved in ``folder``
    (the weights were loaded from there already); ``sharded``: into an FSDP model's optimizer."""
    path, meta = folder / "train_state.pt", folder / "trainer_state.json"
    if not path.is_file() or not meta.is_file():
        raise InputError(f"{folder}: not a zoo train checkpoint (no train_state.pt / trainer_state.json)")
    saved = torch.load(path, weights_only=True)
    if bool(saved.get("fsdp", False)) != sharded:
        raise InputError(f"{folder} was saved by a run {'with' if saved.get('fsdp') else 'without'} --fsdp: "
                         f"resume it {'with' if saved.get('fsdp') else 'without'} --fsdp")
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, optim_state_dict=saved["optimizer"],
                                 options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"])
    if saved.get("data_rng") is not None and data.rng is not None:
        data.rng.set_state(saved["data_rng"])
    if "cuda_rng" in saved and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    state = json.loads(meta.read_text())
    return {"step": state["step"], "epoch": state["epoch"], "batch": state["batch"], "losses": state["losses"],
            "lrs": state["learning_rates"]}


def main_summary(summary: Dict[str, Any]) -> List[str]:
    """The lines ``zoo train`` prints at the end (without ``--json``)."""
    lines = [f"trained {summary['model']} ({summary['task']}): {summary['steps']} steps, "
             f"loss {summary['loss']:.4f} (mean of the last 10: {summary['mean_loss_last_10']:.4f}), "
             f"{summary['seconds']:.1f} s on {summary['processes']} process(es)"]
    if "eval_loss" in summary:
        lines.append(f"eval loss {summary['eval_loss']:.4f}")
    if "copy_accuracy" in summary:
        lines.append(f"copy task: {summary['copy_accuracy']:.0%} of held-out sequences copied exactly")
    lines.append(f"wrote {summary['out']}")
    return lines
