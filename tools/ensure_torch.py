"""Exit 0 when a usable torch (>= 2.4) is importable, 1 otherwise.

`make setup` installs the CPU build torch==2.13.0 only when this says no, so a torch the user
already has (for example a CUDA build) is kept.
"""
import sys

try:
    import torch
except Exception as exc:  # not installed, or broken
    print(f"no usable torch ({exc.__class__.__name__}); installing torch==2.13.0 (CPU build)")
    sys.exit(1)

major, minor = (int(p) for p in torch.__version__.split(".")[:2])
if (major, minor) < (2, 4):
    print(f"torch {torch.__version__} is older than 2.4; installing torch==2.13.0")
    sys.exit(1)
print(f"using the installed torch {torch.__version__}")
