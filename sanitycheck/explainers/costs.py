"""Model evaluations per map (issue 14): forward passes per input, recorded with results.

Each explainer of issue 14 defines ``evaluations_per_map(x_shape)`` in its class. :class:`Occlusion` predates it,
and its module's source is hashed into published results (the clip_text2img board), so neither its class nor
its file may change: its count is defined here and attached to the class when this module is imported
(``sanitycheck.explainers`` imports it). :func:`evaluations_per_map` asks any explainer.
"""

from __future__ import annotations

import inspect
from typing import Optional, Sequence

from torch import nn

from ..errors import ConfigError, NotApplicableError
from .attention_flow import _is_vit, find_visual
from .occlusion import Occlusion

__all__ = ["evaluations_per_map", "occlusion_evaluations_per_map"]


def occlusion_evaluations_per_map(self: Occlusion, x_shape: Sequence[int], model: Optional[nn.Module] = None) -> int:
    """Forward passes per map of :class:`Occlusion`: one per occluded window plus one for the unoccluded
    input. The window (when ``window`` is None) is the ViT patch of ``model``, else 8; without ``model`` the
    window of the last call is used, and before any call that is an error."""
    h, w = (int(v) for v in tuple(x_shape)[-2:])
    window = self.window
    if window is None:
        if model is not None:
            try:
                _, visual = find_visual(model)
                window = int(visual.patch_size[0]) if _is_vit(visual) else 8
            except NotApplicableError:
                window = 8
        elif self.last_window is not None:
            window = self.last_window
        else:
            raise ConfigError(f"{self.name}: window=None is chosen per model (a ViT's patch, else 8); pass the "
                              "model (evaluations_per_map(x_shape, model)) or call the explainer once first")
    stride = self.stride or window
    ys = Occlusion._starts(h, min(window, h), stride)
    xs = Occlusion._starts(w, min(window, w), stride)
    return len(ys) * len(xs) + 1


# Set outside the class body and outside occlusion.py: the published source hash of occlusion stays as it was.
Occlusion.evaluations_per_map = occlusion_evaluations_per_map  # type: ignore[attr-defined]


def evaluations_per_map(explainer, x_shape: Sequence[int], model: Optional[nn.Module] = None) -> Optional[int]:
    """``explainer.evaluations_per_map(x_shape[, model])`` (``model`` passed where the method takes it: a count
    that depends on the model's layer or on a ViT's patch); None for an explainer that does not define it."""
    method = getattr(explainer, "evaluations_per_map", None)
    if method is None:
        return None
    if model is not None and "model" in inspect.signature(method).parameters:
        return int(method(x_shape, model))
    return int(method(x_shape))
