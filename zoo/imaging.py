"""Image files -> pixel values, as a checkpoint's image processor prepares them.

The settings are those of a Hugging Face ``preprocessor_config.json`` (``size``, ``resample``,
``do_rescale``/``rescale_factor``, ``do_normalize``/``image_mean``/``image_std``), taken from the
checkpoint folder when it has that file, else from the registry entry's ``preprocessing`` table,
else the ViT defaults (the model's ``image_size``, bilinear, mean = std = 0.5).

The arithmetic follows transformers' image processors step by step, so pixel values agree with
``ViTImageProcessor`` to float32 rounding: Pillow resizes the 8-bit RGB image, the bytes are
scaled by ``rescale_factor`` in float64 and cast to float32, then ``(x - mean) / std`` in float32.

Pillow and torch are imported when first used.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from .errors import ConfigError, InputError

# Pillow's resampling filters by their transformers/Pillow integer codes and by name
RESAMPLE = {0: "NEAREST", 1: "LANCZOS", 2: "BILINEAR", 3: "BICUBIC", 4: "BOX", 5: "HAMMING"}

# settings that change nothing for these models (names, bookkeeping) or that we implement
_KNOWN = {
    "do_resize", "size", "resample", "do_rescale", "rescale_factor", "do_normalize", "image_mean",
    "image_std", "do_convert_rgb", "image_processor_type", "feature_extractor_type", "processor_class",
    "default_to_square",
}


def settings_for(loaded) -> Dict[str, Any]:
    """The preprocessing settings for a loaded model (see the module docstring for the order)."""
    folder: Optional[Path] = getattr(loaded, "folder", None)
    if folder is not None and (folder / "preprocessor_config.json").is_file():
        path = folder / "preprocessor_config.json"
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc}") from None
        return resolve_settings(raw, loaded.config, str(path))
    entry = getattr(loaded, "entry", None)
    table = dict(getattr(entry, "preprocessing", None) or {})
    return resolve_settings(table, loaded.config, f"registry entry {getattr(entry, 'name', '?')!r}")


def resolve_settings(raw: Mapping[str, Any], config: Mapping[str, Any], where: str = "preprocessing") -> Dict[str, Any]:
    """Fill defaults and check values; raises :class:`ConfigError` naming the setting."""
    for key, value in raw.items():
        if key not in _KNOWN and not (key.startswith("do_") and not value):
            raise ConfigError(f"{where}: preprocessing setting {key}={value!r} is not supported")
    image_size = config.get("image_size", 224)
    size = raw.get("size", image_size)
    if isinstance(size, int) and not isinstance(size, bool):
        height = width = size
    elif isinstance(size, (list, tuple)) and len(size) == 2:
        height, width = size
    elif isinstance(size, Mapping) and set(size) >= {"height", "width"}:
        height, width = size["height"], size["width"]
    else:
        raise ConfigError(f"{where}: preprocessing setting size={size!r} is not supported (an int or height/width)")
    resample = raw.get("resample", 2)
    if isinstance(resample, str):
        names = {v.lower(): k for k, v in RESAMPLE.items()}
        if resample.lower() not in names:
            raise ConfigError(f"{where}: resample={resample!r} is not one of {', '.join(sorted(names))}")
        resample = names[resample.lower()]
    if resample not in RESAMPLE:
        raise ConfigError(f"{where}: resample={resample!r} is not one of {sorted(RESAMPLE)}")
    mean = raw.get("image_mean", [0.5, 0.5, 0.5])
    std = raw.get("image_std", [0.5, 0.5, 0.5])
    channels = int(config.get("num_channels", 3))
    mean = [float(mean)] * channels if isinstance(mean, (int, float)) else [float(m) for m in mean]
    std = [float(std)] * channels if isinstance(std, (int, float)) else [float(s) for s in std]
    if len(mean) != channels or len(std) != channels:
        raise ConfigError(f"{where}: image_mean/image_std need {channels} values, got {mean} / {std}")
    if not all(math.isfinite(m) for m in mean) or not all(math.isfinite(v) and v > 0 for v in std):
        raise ConfigError(f"{where}: image_mean must be finite and image_std finite and > 0, got {mean} / {std}")
    if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
        raise ConfigError(f"{where}: size must be whole pixels > 0, got {height}x{width}")
    rescale = raw.get("rescale_factor", 1 / 255)
    if isinstance(rescale, bool) or not isinstance(rescale, (int, float)) or not math.isfinite(rescale) or rescale <= 0:
        raise ConfigError(f"{where}: rescale_factor must be a finite number > 0, got {rescale!r}")
    return {
        "do_resize": bool(raw.get("do_resize", True)),
        "height": int(height),
        "width": int(width),
        "resample": int(resample),
        "do_rescale": bool(raw.get("do_rescale", True)),
        "rescale_factor": float(rescale),
        "do_normalize": bool(raw.get("do_normalize", True)),
        "image_mean": mean,
        "image_std": std,
    }


def open_image(path: str):
    """An image file (any format Pillow reads) as an RGB ``PIL.Image``; InputError otherwise."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:  # pragma: no cover
        raise InputError("reading images needs Pillow: pip install 'zoo[vision]'") from None
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"{path}: no such image file")
    try:
        with Image.open(p) as im:
            im.load()
            return im.convert("RGB")
    except Image.DecompressionBombError as exc:  # Pillow's guard against images that expand without bound
        raise InputError(f"{path}: too large to decode safely ({exc})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"{path}: not an image Pillow can read ({exc.__class__.__name__}: {exc})") from None


def preprocess(images: Sequence[Any], settings: Mapping[str, Any]):
    """Images (paths or ``PIL.Image``) -> float32 tensor (B, 3, H, W)."""
    import numpy as np
    import torch

    out: List[Any] = []
    for image in images:
        im = open_image(image) if isinstance(image, (str, Path)) else image.convert("RGB")
        if settings["do_resize"]:
            im = im.resize((settings["width"], settings["height"]), resample=settings["resample"])
        x = np.asarray(im)  # (H, W, 3) uint8
        if settings["do_rescale"]:
            x = (x.astype(np.float64) * settings["rescale_factor"]).astype(np.float32)
        else:
            x = x.astype(np.float32)
        if settings["do_normalize"]:
            mean = np.asarray(settings["image_mean"], dtype=np.float32)
            std = np.asarray(settings["image_std"], dtype=np.float32)
            x = (x - mean) / std
        out.append(torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))))
    if not out:
        raise InputError("no images given")
    sizes = {tuple(t.shape) for t in out}
    if len(sizes) > 1:
        raise InputError(f"images differ in size after preprocessing ({sorted(sizes)}); enable resizing")
    return torch.stack(out)
