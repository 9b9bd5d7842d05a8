"""The one call through which the engine explains: in this process (``local``) and on a Ray worker alike.

A module of its own so that executors can import it without importing the engine (:mod:`.run`) itself."""

from __future__ import annotations

from typing import Any, Optional

from torch import Tensor, nn


def explain_maps(modality: Any, explainer: Any, model: nn.Module, inputs: Any, target: Any, *, batch_size: int,
                 name: str, where: str = "", rows: Optional[slice] = None) -> Tensor:
    """Every explainer call of the engine goes through here (the modality batches and checks each call)."""
    return modality.explain(explainer, model, inputs, target, batch_size=batch_size, name=name, where=where,
                            rows=rows)
