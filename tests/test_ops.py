"""zoo.ops.linear computes F.linear, in either orientation, for every row count."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zoo.ops import Linear, linear


@pytest.mark.parametrize("shape", [(1, 1, 48), (2, 48), (3, 2, 48), (4, 48), (2, 8, 48), (128, 48), (129, 48), (2, 300, 48)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_f_linear(shape, bias):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen)
    w = torch.randn(96, 48, generator=gen)
    b = torch.randn(96, generator=gen) if bias else None
    out = linear(x, w, b)
    assert out.shape == (*shape[:-1], 96) and out.is_contiguous()
    torch.testing.assert_close(out, F.linear(x, w, b), atol=1e-5, rtol=1e-5)


def test_linear_module_keeps_nn_linear_keys():
    m = Linear(8, 4)
    assert set(m.state_dict()) == {"weight", "bias"} and isinstance(m, torch.nn.Linear)
