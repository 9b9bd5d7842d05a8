"""Sparse autoencoders as the explainers of an activations audit (issue 15).

A dictionary "explains" a model's activations at a site by a sparse, non-negative combination of learned
directions. The audit asks of it what Adebayo et al. (2018) asked of saliency maps: does it depend on what the model
learned (Heap et al. 2025, "Sparse Autoencoders Can Interpret Randomly Initialized Transformers"), and does it beat a
trivial baseline (AxBench, Wu et al. 2025)?

* ``sae_relu`` — Bricken et al. 2023 ("Towards Monosemanticity"): pre-encoder bias tied to the decoder bias, ReLU,
  MSE + L1, decoder rows of unit norm.
* ``sae_topk`` — Gao et al. 2024 ("Scaling and evaluating sparse autoencoders"): keep the k largest pre-activations.
* ``sae_file`` — a dictionary trained elsewhere, in SAELens' on-disk format (``cfg.json`` + ``sae_weights.safetensors``;
  ``sanitycheck run sae_features --sae PATH``). Its randomized-model controls train the same recipe (architecture,
  width, k or L1) on the randomized model's activations.

Each is fitted per site and model state on the training corpus, deterministically, and cached by the activations'
content key and the configuration (:func:`sanitycheck.models.sae.fit_sae`): the checks ask the run's
:class:`~sanitycheck.models.activation_sites.SAEWorkspace`, which fits each once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from torch import Tensor, nn

from ..errors import ConfigError, NotApplicableError
from .base import Explainer

__all__ = ["SparseAutoencoderExplainer", "ReluSAE", "TopKSAE", "SAEFile"]


class SparseAutoencoderExplainer(Explainer):
    """Base of the dictionaries: ``fit(source, activations, *, state, ...) -> SparseAutoencoder``."""

    modalities = ("activations",)
    requires_model = True
    channel_reduction = "none"
    architecture = "relu"

    def __init__(self, expansion: int = 8, l1_coefficient: Any = None, k: int = 32, seed: int = 0,
                 train_tokens: Optional[int] = None, batch_size: Optional[int] = None, lr: Optional[float] = None):
        if isinstance(expansion, bool) or not isinstance(expansion, int) or expansion < 1:
            raise ConfigError(f"{self.name}: expansion must be a positive integer (d_sae = expansion x d_in), got "
                              f"{expansion!r}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"{self.name}: k must be a positive integer, got {k!r}")
        # one coefficient, or one per site ({site: coefficient}; "default" for the others): the L1 penalty that
        # gives a useful L0 depends on the site's activation statistics (a residual stream with a few outlier
        # dimensions needs a smaller one than an MLP's GELU output), as SAELens trains one SAE per hook
        values = l1_coefficient.values() if isinstance(l1_coefficient, dict) else [l1_coefficient]
        if any(v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not float(v) > 0)
               for v in values):
            raise ConfigError(f"{self.name}: l1_coefficient must be a number > 0 or a mapping site -> number > 0, "
                              f"got {l1_coefficient!r}")
        self.expansion, self.k, self.seed = int(expansion), int(k), int(seed)
        self.l1_coefficient = (None if l1_coefficient is None else
                               {str(k_): float(v) for k_, v in l1_coefficient.items()}
                               if isinstance(l1_coefficient, dict) else float(l1_coefficient))
        self.train_tokens = None if train_tokens is None else int(train_tokens)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.lr = None if lr is None else float(lr)

    def config(self) -> Dict[str, Any]:
        cfg: Dict[str, Any] = {"architecture": self.architecture, "expansion": self.expansion, "seed": self.seed}
        if self.architecture == "topk":
            cfg["k"] = self.k
        else:
            cfg["l1_coefficient"] = self.l1_coefficient
        cfg.update({k: v for k, v in (("train_tokens", self.train_tokens), ("batch_size", self.batch_size),
                                       ("lr", self.lr)) if v is not None})
        return cfg

    def sae_config(self, d_in: int, *, hook_name: str = "", expansion: Optional[int] = None,
                   seed: Optional[int] = None) -> Any:
        """The :class:`~sanitycheck.models.sae.SAEConfig` of this dictionary at a site of width ``d_in``."""
        from ..models.sae import SAEConfig

        kw: Dict[str, Any] = {"d_in": int(d_in), "d_sae": int(d_in) * int(expansion or self.expansion),
                              "architecture": self.architecture, "seed": self.seed if seed is None else int(seed),
                              "hook_name": hook_name}
        if self.architecture == "topk":
            kw["k"] = self.k
        else:
            l1 = self.l1_for(hook_name)
            if l1 is not None:
                kw["l1_coefficient"] = l1
        kw.update({k: v for k, v in (("train_tokens", self.train_tokens), ("batch_size", self.batch_size),
                                      ("lr", self.lr)) if v is not None})
        return SAEConfig(**kw)

    def l1_for(self, site: str) -> Optional[float]:
        """The L1 coefficient at ``site`` (a per-site mapping's entry, else its "default", else None: the
        :class:`~sanitycheck.models.sae.SAEConfig` default)."""
        if not isinstance(self.l1_coefficient, dict):
            return self.l1_coefficient
        return self.l1_coefficient.get(site, self.l1_coefficient.get("default"))

    def fit(self, source: Any, activations: Any, *, state: str = "trained", expansion: Optional[int] = None,
            seed: Optional[int] = None, cache_dir: Any = None, progress: bool = True, device: Any = "cpu") -> Any:
        """This dictionary trained (or loaded from the cache) on ``activations`` of ``source``."""
        from ..models.sae import fit_sae

        cfg = self.sae_config(int(source.d_in), hook_name=str(getattr(source, "name", "")), expansion=expansion,
                              seed=seed)
        return fit_sae(activations.acts, cfg, key=activations.key, cache_dir=cache_dir, progress=progress,
                       device=device)

    def attribute(self, model: nn.Module, x: Tensor, target: Any) -> Tensor:
        raise NotApplicableError(f"{self.name} is a dictionary over activations: it runs in activations suites "
                                 "(sae_features), which call fit(), not on images")


class ReluSAE(SparseAutoencoderExplainer):
    """Bricken et al. 2023: ReLU encoder after subtracting the (tied) decoder bias, MSE + L1, unit-norm decoder rows."""

    name = "sae_relu"
    architecture = "relu"


class TopKSAE(SparseAutoencoderExplainer):
    """Gao et al. 2024: the k largest pre-activations kept (ReLU), no L1 penalty."""

    name = "sae_topk"
    architecture = "topk"


class SAEFile(SparseAutoencoderExplainer):
    """A dictionary trained elsewhere, read from SAELens' on-disk format (``path``: the directory holding
    ``cfg.json`` and ``sae_weights.safetensors``). It is audited at the site named by ``site`` (default: the one
    site of the run); its input width must match that site's. In randomized states, the same recipe (architecture,
    width, k or L1 coefficient, from ``cfg.json``) is trained on the randomized model's activations."""

    name = "sae_file"

    def __init__(self, path: str = "", site: Optional[str] = None, **kwargs: Any):
        if not path:
            raise ConfigError("sae_file needs path= (a directory with SAELens' cfg.json and sae_weights.safetensors); "
                              "from the command line: sanitycheck run sae_features --sae PATH")
        self.path = str(Path(path).expanduser())
        self.site = site
        from ..models.sae import load_sae

        self._loaded = load_sae(self.path)
        cfg = self._loaded.cfg
        d_in, d_sae = int(cfg.d_in), int(cfg.d_sae)
        self.architecture = cfg.architecture
        l1 = getattr(cfg, "l1_coefficient", None)
        super().__init__(expansion=max(1, d_sae // d_in), k=int(getattr(cfg, "k", 32) or 32), seed=int(cfg.seed),
                         l1_coefficient=l1 if l1 else None, **kwargs)
        self.d_sae = d_sae

    def config(self) -> Dict[str, Any]:
        from ..models.weights import state_dict_sha256

        return {"path": self.path, "site": self.site, "architecture": self.architecture,
                "d_in": int(self._loaded.cfg.d_in), "d_sae": self.d_sae,
                "weights_sha256": state_dict_sha256(self._loaded)}

    def applies_to(self, site: str, sites: Any) -> bool:
        return site == self.site if self.site else len(list(sites)) == 1 or site == getattr(self._loaded.cfg,
                                                                                                 "hook_name", None)

    def fit(self, source: Any, activations: Any, *, state: str = "trained", expansion: Optional[int] = None,
            seed: Optional[int] = None, cache_dir: Any = None, progress: bool = True, device: Any = "cpu") -> Any:
        from ..models.sae import fit_sae, load_sae

        if state == "trained" and expansion is None and seed is None:
            return load_sae(self.path, d_in=int(source.d_in), device=device)
        if int(self._loaded.cfg.d_in) != int(source.d_in):
            load_sae(self.path, d_in=int(source.d_in))  # raises the width mismatch, naming both widths
        import dataclasses

        cfg = self._loaded.cfg
        changes: Dict[str, Any] = {}
        if expansion is not None:
            changes["d_sae"] = int(cfg.d_in) * int(expansion)
        if seed is not None:
            changes["seed"] = int(seed)
        return fit_sae(activations.acts, dataclasses.replace(cfg, **changes) if changes else cfg,
                       key=activations.key, cache_dir=cache_dir, progress=progress, device=device)
