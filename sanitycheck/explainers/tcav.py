"""TCAV's concept sensitivity as a map (Kim et al. 2018, §3.1; issue 16).

TCAV explains a class through a concept: the directional derivative ``S(x) = ∇h_l(f_l(x)) · v`` of the target
logit along the concept activation vector ``v`` of layer ``l`` (the normal of a linear classifier separating the
concept's activations from a random set's). :class:`TCAVSensitivity` is that quantity laid out over the layer's
spatial grid: per position ``(i, j)``, ``Σ_c ∂logit/∂a_{c,i,j} · v_{c,i,j}``, upsampled (bilinear) to the input
size. The map sums to ``S(x)`` up to the resampling, so its sign is TCAV's per-input vote and its layout says where
in the image the concept direction moves the logit.

It is the ``tcav`` explainer of the ``tcav`` suites: the TCAV audits (:mod:`sanitycheck.checks.tcav`) record their
scores under this name, so the board's ``tcav`` row carries this method's configuration (concept, layer, random
sets, ridge) and its code hash. The CAV is the mean direction of ``random_sets`` CAVs (the concept against
``<random>_1 .. <random>_k``; :func:`sanitycheck.metrics.tcav.train_cavs`, ridge, exact and deterministic), each
normalized, fitted once per model state (keyed by the weights' checksum) and reused by every batch.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, ModelError
from ..targets import Target
from .base import Explainer, state_checksum

__all__ = ["TCAVSensitivity"]


class TCAVSensitivity(Explainer):
    """Concept sensitivity map: the target logit's gradient at ``layer`` times the concept's CAV, per position.

    ``concept``: a concept set name (:func:`sanitycheck.checks.tcav.load_concept_sets`: ``stripes``, ``dots``,
    ``zigzag``, ``fmnist_items_stripes``, ...); ``random``: the random-set family (``random_noise``,
    ``random_photos``, ``random_fmnist_items``); ``layer``: the bottleneck (default: the last ``nn.Conv2d`` run);
    ``random_sets``: how many CAVs (concept vs ``<random>_1..k``) are
    averaged; ``n_images`` per set; ``seed`` of the sets; ``ridge``: the CAV classifier's penalty."""

    name = "tcav"
    channel_reduction = "sum"
    #: image classifiers only: a concept's CAV lives in a classifier's layer (a CLIP similarity has no class logit)
    modalities = ("image",)

    def __init__(self, concept: str = "stripes", layer: Optional[str] = None, random: str = "random_noise",
                 random_sets: int = 5, n_images: int = 50, seed: int = 0, ridge: float = 1.0):
        if not isinstance(concept, str) or not concept:
            raise ConfigError(f"tcav: concept must be a concept set name (e.g. 'stripes'), got {concept!r}")
        if isinstance(random_sets, bool) or not isinstance(random_sets, int) or random_sets < 1:
            raise ConfigError(f"tcav: random_sets must be a positive integer, got {random_sets!r}")
        if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 2:
            raise ConfigError(f"tcav: n_images must be an integer >= 2, got {n_images!r}")
        self.concept, self.layer, self.random = concept, layer, random
        self.random_sets, self.n_images, self.seed, self.ridge = random_sets, n_images, int(seed), float(ridge)
        self._cavs: Dict[Tuple, Tensor] = {}

    def config(self) -> Dict[str, Any]:
        return {"concept": self.concept, "layer": self.layer, "random": self.random, "random_sets": self.random_sets,
                "n_images": self.n_images, "seed": self.seed, "ridge": self.ridge,
                "map": "sum over channels of d logit / d activation x CAV at each position of the layer, bilinear "
                       "to the input size"}

    def _layer(self, model: nn.Module, x: Tensor) -> str:
        """``layer``, checked against the model (close matches offered); by default the last ``nn.Conv2d`` the
        forward pass runs (as Grad-CAM's default, :func:`~sanitycheck.explainers.cam.find_last_conv`)."""
        if self.layer is None:
            from .cam import find_last_conv

            return find_last_conv(model, x)
        from ..metrics.tcav import resolve_layers

        return resolve_layers(model, [self.layer])[0]

    def cav(self, model: nn.Module, shape: Tuple[int, ...], layer: Optional[str] = None) -> Tensor:
        """The mean unit CAV ``(D,)`` at ``layer`` (default: the explainer's) for this model state (cached by the
        weights' checksum)."""
        layer = layer or self._layer(model, torch.zeros(1, *shape))
        key = (state_checksum(model), layer, tuple(shape))
        if key not in self._cavs:
            from ..checks.tcav import load_concept_sets
            from ..metrics.tcav import layer_activations, train_cavs

            c, h, w = (int(v) for v in shape)
            kw = dict(size=h if h == w else (h, w), n=self.n_images, seed=self.seed, channels=c)
            sets = load_concept_sets(self.concept, **kw) + [
                s for i in range(1, self.random_sets + 1) for s in load_concept_sets(f"{self.random}_{i}", **kw)]
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            acts = layer_activations(model, torch.cat([s.images for s in sets]).float(), [layer], device=device)[layer]
            bounds, start = [], 0
            for s in sets:
                bounds.append(acts[start:start + s.images.shape[0]])
                start += s.images.shape[0]
            cavs = train_cavs(bounds, [(0, i) for i in range(1, len(sets))], ridge=self.ridge)
            norms = cavs.norm(dim=1, keepdim=True)
            if bool((norms == 0).any()):
                raise ConfigError(f"tcav: the concept set {self.concept!r} equals a random set at layer {layer!r} "
                                  "(a zero CAV): no concept direction to map")
            if len(self._cavs) >= 4:
                self._cavs.clear()
            self._cavs[key] = (cavs / norms).mean(0)
        return self._cavs[key]

    def attribute(self, model: nn.Module, x: Tensor, target: Target) -> Tensor:
        layer = self._layer(model, x)
        v = self.cav(model, tuple(x.shape[1:]), layer)
        store = []

        def hook(_m, _i, out):
            if not isinstance(out, Tensor):
                raise ModelError(f"tcav: layer {layer!r} returns {type(out).__name__}, not one activation tensor")
            out.retain_grad()
            store.append(out)

        handle = model.get_submodule(layer).register_forward_hook(hook)
        try:
            with torch.enable_grad():
                target(model(x.detach())).sum().backward()
        finally:
            handle.remove()
            model.zero_grad(set_to_none=True)
        act = store[0]
        if act.dim() != 4:
            raise ConfigError(f"tcav: layer {layer!r} gives activations of shape {tuple(act.shape)}; a map needs a "
                              "spatial layer (B, C, h, w) — choose a convolutional or pooling layer")
        g = act.grad.detach().double()
        dd = (g * v.to(g.device).reshape(1, *g.shape[1:])).sum(1, keepdim=True)  # (B, 1, h, w)
        return F.interpolate(dd.float(), size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
