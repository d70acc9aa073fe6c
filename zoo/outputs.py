"""What zoo models return: one small dataclass shared by every architecture."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple


@dataclass
class ModelOutput:
    """Model outputs by name; fields a model does not produce stay ``None``.

    ``hidden_states`` (when asked for with ``output_hidden_states=True``) follows the
    transformers convention of the same family, so ``verify`` can compare them block by block.
    """

    logits: Any = None  # [B, T, vocab] (language models), [B, labels] / [B, T, labels] (classifiers)
    last_hidden_state: Any = None
    pooler_output: Any = None
    hidden_states: Optional[Tuple[Any, ...]] = None
    start_logits: Any = None  # question answering: [B, T] scores of each token starting the answer
    end_logits: Any = None  # ... and ending it
    loss: Any = None  # given labels: the training loss, as transformers computes it (zoo.losses)

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)
