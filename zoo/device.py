"""Choosing where a model runs: device (auto: cuda > mps > cpu) and dtype."""
from __future__ import annotations

from functools import lru_cache
from typing import List, Optional

import torch

from .errors import DeviceError

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def available_devices() -> List[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def pick_device(spec: Optional[str] = "auto") -> torch.device:
    """``auto`` picks cuda > mps > cpu; anything else must be available here."""
    spec = (spec or "auto").strip().lower()
    available = available_devices()
    if spec == "auto":
        for prefix in ("cuda", "mps"):
            for d in available:
                if d.startswith(prefix):
                    return torch.device(d if prefix == "mps" else "cuda:0")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise DeviceError(f"unknown device {spec!r} (available: {', '.join(available)})") from None
    name = str(device) if device.index is not None or device.type == "cpu" else f"{device.type}:0"
    if device.type == "mps":
        name = "mps"
    if name not in available:
        raise DeviceError(f"device {spec!r} is not available here (available: {', '.join(available)})")
    return device


def pick_dtype(spec, device: torch.device) -> torch.dtype:
    """Parse a dtype name and check the device can run it (a tiny probe, cached)."""
    if spec is None:
        return torch.float32
    if isinstance(spec, torch.dtype):
        dtype = spec
    else:
        try:
            dtype = DTYPES[str(spec).strip().lower().replace("torch.", "")]
        except KeyError:
            raise DeviceError(
                f"unknown dtype {spec!r} (choose float32, bfloat16 or float16)"
            ) from None
    if not _runs(device.type, device.index, dtype):
        raise DeviceError(f"{device} cannot run {str(dtype).replace('torch.', '')} here; try float32")
    return dtype


@lru_cache(maxsize=None)
def _runs(device_type: str, index: Optional[int], dtype: torch.dtype) -> bool:
    """Whether the ops our models use (matmul, layer norm, softmax attention) run in ``dtype``."""
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    device = torch.device(device_type, index) if index is not None else torch.device(device_type)
    try:
        x = torch.randn(1, 2, 4, 8, device=device).to(dtype)
        torch.nn.functional.layer_norm(x, (8,))
        torch.nn.functional.scaled_dot_product_attention(x, x, x, is_causal=True)
        (x @ x.transpose(-1, -2)).softmax(-1)
        return True
    except (RuntimeError, TypeError):
        return False
