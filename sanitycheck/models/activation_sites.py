"""The model of an SAE audit: activation sites of one or more real models, audited together (issue 15).

An :class:`ActivationSites` holds :class:`~sanitycheck.models.activation_sources.ActivationSource` objects by
name — the one-layer review LM's MLP output (``review_lm.mlp``, the setting of Bricken et al. 2023) and
all-MiniLM-L6-v2's residual stream after a layer (``minilm.layer2``, ``minilm.layer5``). It is an ``nn.Module``
only so that the engine hashes, moves and records it like any audited model; it has no forward pass of its own.

:class:`SAEWorkspace` is what every SAE check shares within a run: activations of each site in each model state
(trained, or re-initialized as Heap et al. 2025's controls), collected once and memory-mapped from the content-keyed
activation cache, and every dictionary fitted once (the SAE cache is keyed by the activations' content key and the
dictionary's configuration). The checks only ask; nothing is computed twice.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import ConfigError, ModelError
from ..seeding import derive_seed

__all__ = ["ActivationSites", "SAEWorkspace", "activation_sites", "STATES", "TRAINED", "site_source"]

TRAINED = "trained"
#: model states of the randomized-model control (Heap et al. 2025): every weight re-initialized, or all but the
#: token (and position) embeddings
RANDOMIZED = {"randomized_all": "all", "randomized_keep_embeddings": "keep_embeddings"}
STATES = (TRAINED, *RANDOMIZED)
#: the built-in sites, by the name a suite gives them
SITE_PATTERNS = {
    r"review_lm\.mlp": "the one-layer review LM's MLP activations (GELU output, 512 wide)",
    r"minilm\.layer(\d+)": "all-MiniLM-L6-v2's residual stream after encoder layer <k> (0-based, 384 wide)",
}


def site_source(site: str, *, seed: int = 0, cache_dir: Any = None, progress: bool = True, device: Any = "cpu") -> Any:
    """The :class:`ActivationSource` of a built-in site name (``review_lm.mlp``, ``minilm.layer<k>``)."""
    from . import activation_sources as sources

    if site == "review_lm.mlp":
        return sources.review_lm_mlp(seed=seed, cache_dir=cache_dir, progress=progress, device=device)
    m = re.fullmatch(r"minilm\.layer(\d+)", site)
    if m:
        return sources.minilm_residual(layer=int(m.group(1)), cache_dir=cache_dir, progress=progress)
    import difflib

    known = ["review_lm.mlp", "minilm.layer2", "minilm.layer5"]
    close = difflib.get_close_matches(site, known, n=3, cutoff=0.5)
    raise ConfigError(f"unknown activation site {site!r}" + (f"; did you mean {', '.join(close)}?" if close else "")
                      + " Known sites: " + "; ".join(f"{p.replace(chr(92), '')}: {d}" for p, d in SITE_PATTERNS.items()))


class ActivationSites(nn.Module):
    """Named activation sources audited together. ``sources[name]`` is an ``ActivationSource``."""

    def __init__(self, sources: Dict[str, Any]):
        super().__init__()
        if not sources:
            raise ConfigError("an SAE audit needs at least one activation site (model params: sites: [...])")
        self.sources = dict(sources)
        # every distinct underlying model once, so that state_dict (the weights hash) and .eval() cover them
        unique: List[nn.Module] = []
        for s in self.sources.values():
            if all(s.model is not m for m in unique):
                unique.append(s.model)
        self.models = nn.ModuleList(unique)
        self.eval()

    @property
    def names(self) -> List[str]:
        return list(self.sources)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise ModelError("ActivationSites has no forward pass: an SAE audit reads each site's activations "
                         "(ActivationSites.sources[name].activations(ids, mask))")


def activation_sites(sites: Sequence[str] = ("review_lm.mlp",), seed: int = 0, cache_dir: Any = None,
                     progress: bool = True, device: Any = "cpu") -> ActivationSites:
    """The registered model ``activation_sites``: the named sites (see :data:`SITE_PATTERNS`), each model loaded
    (or trained and cached) once."""
    if isinstance(sites, str):
        sites = [sites]
    if not sites:
        raise ConfigError("activation_sites: name at least one site, e.g. sites: [review_lm.mlp, minilm.layer2]")
    model = ActivationSites({s: site_source(s, seed=seed, cache_dir=cache_dir, progress=progress, device=device)
                             for s in sites})
    info: Dict[str, Any] = {}
    for name, src in model.sources.items():
        info[name] = {"site": getattr(src, "site", name), "d_in": int(src.d_in),
                      **{k: v for k, v in (getattr(src.model, "sanitycheck_info", {}) or {}).items()
                         if isinstance(v, (int, float, str, bool)) or v is None}}
    model.sanitycheck_info = {"sites": info}
    return model


class SAEWorkspace:
    """Activations and fitted dictionaries of one run, shared by every SAE check (memoized here, cached on disk).

    ``corpora``: ``{"train": WordCorpus, "eval": WordCorpus, "concepts": callable -> WordCorpus}`` — the SAE's
    training text, the audited texts, and the texts with known concepts (loaded on first use)."""

    def __init__(self, sites: ActivationSites, corpora: Dict[str, Any], *, seed: int, cache_dir: Any = None,
                 progress: bool = True, device: Any = "cpu", max_len: int = 64, batch_size: int = 64):
        self.sites, self.corpora = sites, dict(corpora)
        self.seed, self.cache_dir, self.progress, self.device = seed, cache_dir, progress, device
        self.max_len, self.batch_size = int(max_len), int(batch_size)
        self._sources: Dict[Tuple[str, str], Any] = {}
        self._acts: Dict[Tuple[str, str, str], Any] = {}
        self._saes: Dict[Tuple[Any, ...], Any] = {}

    # ------------------------------------------------------------------ corpora and sources
    def corpus(self, which: str) -> Any:
        c = self.corpora.get(which)
        if c is None:
            raise ConfigError(f"the SAE audit has no {which!r} corpus (known: {sorted(self.corpora)})")
        if callable(c) and not hasattr(c, "words"):
            c = self.corpora[which] = c()
        return c

    def source(self, site: str, state: str = TRAINED) -> Any:
        if site not in self.sites.sources:
            raise ConfigError(f"unknown site {site!r}; this run audits {self.sites.names}")
        if state not in STATES:
            raise ConfigError(f"unknown model state {state!r}; one of {STATES}")
        key = (site, state)
        if key not in self._sources:
            trained = self.sites.sources[site]
            self._sources[key] = trained if state == TRAINED else trained.randomized(
                RANDOMIZED[state], seed=derive_seed(self.seed, "sae_randomized", site, state))
        return self._sources[key]

    def activations(self, site: str, which: str, state: str = TRAINED) -> Any:
        """The :class:`~sanitycheck.data.activation_cache.ActivationSet` of corpus ``which`` at ``site``."""
        key = (site, which, state)
        if key not in self._acts:
            from ..data.activation_cache import collect_activations

            self._acts[key] = collect_activations(self.source(site, state), self.corpus(which), max_len=self.max_len,
                                                  batch_size=self.batch_size, cache_dir=self.cache_dir,
                                                  progress=self.progress)
        return self._acts[key]

    def statistics(self, site: str, state: str = TRAINED, *, chunk: int = 65536) -> Tuple[torch.Tensor, float]:
        """The mean activation and the total variance (mean squared distance to it) of ``site`` over the
        training corpus: what FVU is relative to and what mean-ablation inserts. Fixed by the training text, so a
        text's scores do not depend on which other texts are audited (a re-run of a sample reproduces them)."""
        key = ("stats", site, state)
        if key not in self._acts:
            acts = self.activations(site, "train", state).acts
            n = acts.shape[0]
            total = torch.zeros(acts.shape[1], dtype=torch.float64)
            for i in range(0, n, chunk):
                total += acts[i:i + chunk].double().sum(0)
            mean = total / max(n, 1)
            sq = 0.0
            for i in range(0, n, chunk):
                sq += float(((acts[i:i + chunk].double() - mean) ** 2).sum())
            self._acts[key] = (mean.float(), sq / max(n, 1))
        return self._acts[key]

    # ------------------------------------------------------------------ dictionaries
    def sae(self, explainer: Any, site: str, state: str = TRAINED, **variant: Any) -> Any:
        """``explainer``'s dictionary of ``site`` in ``state`` (``variant``: e.g. ``seed=1``, ``expansion=4``):
        fitted on the training corpus's activations once, then from the cache."""
        key = (id(explainer), site, state, tuple(sorted(variant.items())))
        if key not in self._saes:
            acts = self.activations(site, "train", state)
            self._saes[key] = explainer.fit(self.source(site, state), acts, state=state, cache_dir=self.cache_dir,
                                            progress=self.progress, device=self.device, **variant)
        return self._saes[key]

    def encode(self, sae: Any, acts: Any, *, chunk: int = 8192) -> torch.Tensor:
        """Latent activations ``(n_tokens, d_sae)`` float32 of ``acts`` (batched over tokens)."""
        with torch.no_grad():
            return torch.cat([sae.encode(acts.acts[i:i + chunk].float()) for i in range(0, acts.acts.shape[0], chunk)])

    def reconstruct(self, sae: Any, acts: Any, *, chunk: int = 8192) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(x_hat, z)`` of every token of ``acts`` (batched over tokens)."""
        xs, zs = [], []
        with torch.no_grad():
            for i in range(0, acts.acts.shape[0], chunk):
                x_hat, z = sae(acts.acts[i:i + chunk].float())
                xs.append(x_hat)
                zs.append(z)
        return torch.cat(xs), torch.cat(zs)

    def splice(self, sae: Optional[Any]) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
        """The replacement of a hooked activation by ``sae``'s reconstruction (None: zero-ablation)."""
        if sae is None:
            return torch.zeros_like

        def replace(a: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return sae(a.float())[0].to(a.dtype)

        return replace
