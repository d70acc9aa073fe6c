"""Vision Transformer (Dosovitskiy et al., 2020), readable top to bottom.

An image is cut into patches of ``patch_size`` pixels; each patch is projected to a vector (a
strided convolution), a learned class token is put in front, learned position embeddings are
added, and the sequence runs through ``num_layers`` pre-norm encoder blocks (LayerNorm ->
self-attention -> residual, LayerNorm -> MLP -> residual) and a final LayerNorm. A classifier
reads the class token; an encoder may instead end in the pre-logits layer (dense + tanh on the
class token), which checkpoints on the Hub call the pooler.

Training: ``model(pixel_values, labels=...)`` also returns the classifier's ``.loss``
(zoo.losses.classification: cross-entropy, binary cross-entropy or mean squared error, by
``problem_type``). In training mode dropout applies where transformers' ViT applies it:
``dropout_rate`` on the embeddings and on each block's attention and MLP outputs before their
residual sums, ``attention_dropout_rate`` on the attention probabilities; in eval mode both are
the identity.

The config (:class:`ViTConfig`) is ViT's own, named as the original code
(google-research/vision_transformer) names it; zoo.converters.hf_vit translates a checkpoint's
into it. Submodules carry the names of the files on the Hugging Face Hub
(``embeddings.cls_token``, ``encoder.layer.N.attention.attention.query``, ``layernorm_before``,
``pooler``, ...), so the converter's key map is 1:1 apart from the ``vit.`` prefix.

Images at another resolution than the one trained get their position embeddings resized by
bicubic interpolation of the patch grid (the class token's embedding is kept as is), exactly as
transformers does with ``interpolate_pos_encoding=True``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo import losses
from zoo.activations import ACTIVATIONS
from zoo.errors import ConfigError, InputError
from zoo.outputs import ModelOutput

TASKS = ("image-classification", "image-feature-extraction")
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass
class ViTConfig:
    """ViT's hyperparameters, named as the original code names them where it has them; the
    defaults are ViT-B/16 at 224 x 224 pixels."""

    image_size: Tuple[int, int] = (224, 224)  # (height, width) the position embeddings were trained at
    patch_size: Tuple[int, int] = (16, 16)  # (height, width) of one patch
    channels: int = 3  # channels of the input image
    hidden_size: int = 768  # width of every token's vector
    num_layers: int = 12  # encoder blocks
    num_heads: int = 12  # attention heads, each hidden_size // num_heads wide
    mlp_dim: int = 3072  # hidden width of each block's MLP
    activation: str = "gelu"  # the MLP's activation, a name in zoo.activations.ACTIVATIONS
    norm_eps: float = 1e-12  # epsilon of every LayerNorm
    qkv_bias: bool = True  # whether the query, key and value projections have biases
    num_classes: int = 2  # outputs of the classifier (task image-classification)
    # width of the pre-logits layer an encoder (task image-feature-extraction) ends in, None for
    # none; a classifier reads the class token directly (its head replaces the pre-logits layer,
    # as in the paper's fine-tuning)
    representation_size: Optional[int] = None
    representation_activation: str = "tanh"  # the pre-logits layer's activation
    dropout_rate: float = 0.0  # on the embeddings and on each attention and MLP output (training only)
    attention_dropout_rate: float = 0.0  # on the attention probabilities (training only)
    # the classifier's loss, one of PROBLEM_TYPES; None: picked from the labels as
    # zoo.losses.problem_type does (one class: regression; integer labels: single-label)
    problem_type: Optional[str] = None

    def __post_init__(self):
        """Refuse, naming the field, a config this file cannot build."""
        for name in ("image_size", "patch_size"):
            value = getattr(self, name)
            if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(_positive(v) for v in value)):
                raise ConfigError(f"vit: {name}={value!r} must be (height, width), two positive integers")
            setattr(self, name, tuple(value))
        for name in ("channels", "hidden_size", "num_layers", "num_heads", "mlp_dim", "num_classes",
                     "representation_size"):
            value = getattr(self, name)
            if not _positive(value) and not (name == "representation_size" and value is None):
                raise ConfigError(f"vit: {name}={value!r} must be a positive integer")
        for name in ("activation", "representation_activation"):
            value = getattr(self, name)
            if value not in ACTIVATIONS:
                raise ConfigError(
                    f"vit: {name}={value!r} is not supported (supported: {', '.join(sorted(ACTIVATIONS))})"
                )
        for name in ("dropout_rate", "attention_dropout_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ConfigError(f"vit: {name}={value!r} must be a probability from 0 to 1")
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ConfigError(f"vit: problem_type={self.problem_type!r} is not one of {', '.join(PROBLEM_TYPES)}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"vit: hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        if min(self.grid) < 1:
            raise ConfigError(
                f"vit: image_size={list(self.image_size)} is smaller than patch_size={list(self.patch_size)}"
            )

    @property
    def grid(self) -> Tuple[int, int]:
        """Patches per column and per row at the trained resolution."""
        return self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1]


class Dense(nn.Module):
    """A linear layer kept under the name ``dense``, as in the checkpoint
    (``attention.output.dense``, ``intermediate.dense``, ``output.dense``, ``pooler.dense``)."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.dense = nn.Linear(n_in, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x)


class PatchEmbeddings(nn.Module):
    """(B, C, H, W) -> (B, H/p * W/p, hidden): one strided conv = one linear map per patch."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.projection = nn.Conv2d(cfg.channels, cfg.hidden_size, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.projection(pixel_values)  # (B, hidden, gh, gw); patches in row-major order
        return x.flatten(2).transpose(1, 2)  # (B, gh * gw, hidden)


class Embeddings(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        gh, gw = cfg.grid
        # zeros, not random: zoo builds on the meta device and assigns the checkpoint's tensors
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, 1 + gh * gw, cfg.hidden_size))
        self.patch_embeddings = PatchEmbeddings(cfg)
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def positions(self, gh: int, gw: int, interpolate: Optional[bool]) -> torch.Tensor:
        """Position embeddings (1, 1 + gh*gw, hidden) for a gh x gw patch grid.

        The trained table is used as is when the grid is the trained one; otherwise the patch
        part, seen as a (hidden, gh0, gw0) image, is resized bicubically to (gh, gw). The
        class token's embedding (row 0) has no place in the grid and is kept unchanged. (This
        is transformers' ``interpolate_pos_encoding=True``; where transformers resizes a grid to
        its own size, bicubic resampling at scale 1 is the identity.)
        """
        table = self.position_embeddings
        gh0, gw0 = self.cfg.grid
        if (gh, gw) == (gh0, gw0):
            return table
        if interpolate is False:
            raise InputError(
                f"vit: the image is {gh}x{gw} patches but the model was trained on {gh0}x{gw0}; "
                f"pass interpolate_pos_encoding=True (or leave it unset) to resize the position embeddings"
            )
        cls_pos, patch_pos = table[:, :1], table[:, 1:]
        dim = table.shape[-1]
        patch_pos = patch_pos.reshape(1, gh0, gw0, dim).permute(0, 3, 1, 2)  # (1, hidden, gh0, gw0)
        patch_pos = F.interpolate(patch_pos, size=(gh, gw), mode="bicubic", align_corners=False)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, gh * gw, dim)  # back to row-major patches
        return torch.cat((cls_pos, patch_pos), dim=1)

    def forward(self, pixel_values: torch.Tensor, interpolate: Optional[bool]) -> torch.Tensor:
        B, _, H, W = pixel_values.shape
        x = self.patch_embeddings(pixel_values)  # (B, N, hidden)
        x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)  # (B, 1 + N, hidden)
        ph, pw = self.cfg.patch_size
        return self.dropout(x + self.positions(H // ph, W // pw, interpolate))


class SelfAttention(nn.Module):
    """Multi-head self-attention over all tokens (no mask: every patch sees every patch).

    q, k and v keep the checkpoint's three Linears (zoo.accel.fused_qkv computes the three as one
    product). In training mode the attention probabilities get dropout ``attention_dropout_rate``."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.n_head = cfg.num_heads
        self.dropout = cfg.attention_dropout_rate
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.qkv_bias)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.qkv_bias)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.qkv_bias)

    def project_qkv(self, x: torch.Tensor):
        """``(query(x), key(x), value(x))``."""
        return self.query(x), self.key(x), self.value(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = (t.view(B, T, self.n_head, hs).transpose(1, 2) for t in self.project_qkv(x))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)  # (B, nh, T, hs)
        return y.transpose(1, 2).reshape(B, T, C)  # heads side by side


class Attention(nn.Module):
    """``attention.attention`` (q, k, v) then ``attention.output.dense``, as the checkpoint nests them."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.attention = SelfAttention(cfg)
        self.output = Dense(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.attention(x))


class Layer(nn.Module):
    """One pre-norm encoder block; ``dropout`` on each sublayer's output before its residual sum."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.attention = Attention(cfg)
        self.layernorm_after = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.intermediate = Dense(cfg.hidden_size, cfg.mlp_dim)  # MLP up
        self.output = Dense(cfg.mlp_dim, cfg.hidden_size)  # MLP down
        self.act = ACTIVATIONS[cfg.activation]
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        x = x + self.dropout(self.attention(self.layernorm_before(x)))
        return x + self.dropout(self.mlp(self.layernorm_after(x)))

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.act(self.intermediate(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_layers))


class ViT(nn.Module):
    """``model(pixel_values)`` with pixel_values (B, C, H, W) float, normalized.

    Classifier (task ``image-classification``): output ``.logits`` (B, num_classes), read off the
    class token, and given ``labels`` the training ``.loss``. Encoder
    (``image-feature-extraction``): ``.last_hidden_state`` (B, 1 + N, hidden) and, with a
    pre-logits layer, ``.pooler_output`` (B, representation_size).
    """

    def __init__(self, cfg: ViTConfig, task: str):
        super().__init__()
        if task not in TASKS:
            raise ConfigError(f"vit: task {task!r} is not supported (tasks: {', '.join(TASKS)})")
        self.config = cfg
        self.task = task
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)
        self.layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        if task == "image-classification":
            self.classifier = nn.Linear(cfg.hidden_size, cfg.num_classes)
        elif cfg.representation_size is not None:
            self.pooler = Dense(cfg.hidden_size, cfg.representation_size)  # the pre-logits layer

    def _check(self, pixel_values: Any) -> None:
        cfg = self.config
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4:
            shape = list(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
            raise InputError(f"vit expects pixel_values of shape [B, {cfg.channels}, H, W], got {shape}")
        if not pixel_values.is_floating_point():
            raise InputError(
                f"vit expects float pixel values (normalized as the checkpoint's preprocessing says), "
                f"got {pixel_values.dtype}; zoo.imaging.preprocess turns image files into them"
            )
        B, C, H, W = pixel_values.shape
        if C != cfg.channels:
            raise InputError(f"vit: the model takes {cfg.channels} channels, the input has {C}")
        ph, pw = cfg.patch_size
        if H < ph or W < pw or B == 0:
            raise InputError(f"vit: input {H}x{W} is smaller than one {ph}x{pw} patch (or the batch is empty)")

    def blocks(self, x: torch.Tensor, hidden: Optional[list] = None) -> torch.Tensor:
        """The encoder blocks over (B, 1 + N, hidden); each block's output appended to ``hidden``."""
        for block in self.encoder.layer:
            x = block(x)
            if hidden is not None:
                hidden.append(x)
        return x

    def _check_labels(self, labels: Any, batch: int) -> None:
        if self.task != "image-classification":
            raise InputError(f"vit: labels need a classifier; the model was built for {self.task}")
        if not isinstance(labels, torch.Tensor) or labels.dim() == 0 or labels.shape[0] != batch:
            shape = list(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise InputError(f"vit: labels must have one row per image ({batch}), got {shape}")
        n = self.config.num_classes
        kind = losses.problem_type(n, labels, self.config.problem_type)
        if kind == "single_label_classification":
            if labels.is_floating_point() or labels.numel() != batch:
                raise InputError(f"vit: single-label classification takes [B] class ids, got {labels.dtype} "
                                 f"{list(labels.shape)}")
            bad = labels[(labels != losses.IGNORE) & ((labels < 0) | (labels >= n))]
            if bad.numel():
                raise InputError(f"vit: label {int(bad[0])} is not a class id in [0, {n})")
        elif labels.numel() != batch * n:
            raise InputError(f"vit: {kind} takes labels [B, {n}], got {list(labels.shape)}")

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: Optional[torch.Tensor] = None,
        interpolate_pos_encoding: Optional[bool] = None,
        output_hidden_states: bool = False,
    ) -> ModelOutput:
        """``labels`` (classifier only): [B] class ids, [B, num_classes] float targets
        (multi-label) or values (regression), as transformers' ViTForImageClassification takes
        them. ``interpolate_pos_encoding``: None resizes the position embeddings only when the
        image's patch grid differs from the trained one; True behaves as transformers' flag;
        False refuses other resolutions."""
        self._check(pixel_values)
        if labels is not None:
            self._check_labels(labels, pixel_values.shape[0])
        x = self.embeddings(pixel_values.to(self.layernorm.weight.dtype), interpolate_pos_encoding)
        hidden = [x] if output_hidden_states else None  # transformers: embeddings, then each block
        x = self.blocks(x, hidden)
        x = self.layernorm(x)  # (B, 1 + N, hidden)
        states = tuple(hidden) if hidden else None
        if self.task == "image-classification":
            logits = self.classifier(x[:, 0])
            loss = None if labels is None else losses.classification(logits, labels, self.config.problem_type)
            return ModelOutput(logits=logits, hidden_states=states, loss=loss)
        pooled = None
        if hasattr(self, "pooler"):
            pooled = ACTIVATIONS[self.config.representation_activation](self.pooler(x[:, 0]))
        return ModelOutput(last_hidden_state=x, pooler_output=pooled, hidden_states=states)


def from_config(config: Dict[str, Any], task: Optional[str] = None) -> ViT:
    """The model for ``task`` from a config in :class:`ViTConfig`'s names."""
    return ViT(ViTConfig(**config), task or TASKS[0])


def parameter_count(config: Dict[str, Any], task: Optional[str] = None) -> int:
    """The parameters :func:`from_config` builds, from the config alone (checked before building)."""
    cfg, task = ViTConfig(**config), task or TASKS[0]
    H, inner = cfg.hidden_size, cfg.mlp_dim
    (ph, pw), (gh, gw) = cfg.patch_size, cfg.grid
    qkv_bias = 3 * H if cfg.qkv_bias else 0
    embeddings = cfg.channels * ph * pw * H + H + H + (1 + gh * gw) * H
    layer = 2 * H + 3 * H * H + qkv_bias + (H * H + H) + 2 * H + (H * inner + inner) + (inner * H + H)
    if task == "image-classification":
        head = H * cfg.num_classes + cfg.num_classes
    else:
        R = cfg.representation_size
        head = H * R + R if R is not None else 0
    return embeddings + cfg.num_layers * layer + 2 * H + head


def example_inputs(config: Dict[str, Any], task: str, batch: int, seq: int, generator) -> Dict[str, Any]:
    """Random pixel values at the trained resolution (``seq`` does not apply to images)."""
    cfg = ViTConfig(**config)
    h, w = cfg.image_size
    return {"pixel_values": torch.randn(batch, cfg.channels, h, w, generator=generator)}
