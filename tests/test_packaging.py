"""The wheel installs plugins and converters under the zoo namespace, never top-level."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_layout(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("zoo-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
        registry = zf.read("zoo/registry.toml").decode()
    top = {n.split("/")[0] for n in names}
    assert "plugins" not in top and "converters" not in top, sorted(top)
    assert "zoo/plugins/gpt2.py" in names and "zoo/converters/hf_gpt2.py" in names
    assert "[models.gpt2]" in registry  # the real catalog, not a dangling link
    assert "[zoo]" in entry_points and "hf_gpt2 = zoo.converters.hf_gpt2" in entry_points
    assert not any(n.startswith("tests/") for n in names)
