"""TCAV (Kim et al., "Interpretability Beyond Feature Attribution: Testing with Concept Activation Vectors",
ICML 2018) with the paper's statistical test, batched and shared.

captum's :class:`captum.concept.TCAV` trains one CAV per (concept set, random set, layer) from activations it
recomputes and stores on disk per experimental set, and leaves the statistical test to the user. Here the
same quantities are computed once and shared:

* **activations** of every requested layer for every concept and random set come from one forward pass per
  batch with hooks on all layers at once (:func:`layer_activations`); the explained inputs' **gradients** of
  the target logit with respect to every layer's activations come from one forward and one backward pass per
  batch (:func:`layer_gradients`). No run, concept or random set recomputes them.
* **CAVs** are the weights of linear classifiers (concept = +1, so the CAV points towards the concept, as
  captum's ``DefaultClassifier.weights()[concept]``): ridge classifiers, all (concept, random) pairs of a
  layer solved together in closed form (:func:`train_cavs`): exact and deterministic, no train/test split
  drawn from the global RNG, no SGD noise (captum's default is sklearn's ``SGDClassifier``; the test
  suite checks the two directions agree).
* **scores** as captum's ``TCAV``: the sign count (share of inputs whose directional derivative
  ``grad · cav`` is positive) and the magnitude score (sum of positive derivatives over the sum of their
  absolute values).
* **the test** (the paper's §3.2): ``n_runs`` runs of the concept against random sets ``random_1..n``, and,
  for the null distribution, the held-out random set ``random_0`` against the same ``random_1..n``; a
  two-sided Student t-test (:func:`scipy.stats.ttest_ind`, equal variances) of the concept's run scores against
  the null scores; Bonferroni over concepts × layers. A run whose CAV is zero (the two sets are identical)
  has no defined score and is dropped, counted; with fewer than two defined runs on either side the test is
  "not significant" (p = 1) with the reason — a concept identical to a random set never crashes the test.
* **CIs**: a percentile bootstrap of the mean run score (:func:`sanitycheck.stats.bootstrap_ci`), seeded
  from ``(seed, "tcav", concept, layer)``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..errors import ConfigError, DataError, ModelError
from ..stats import Summary, bootstrap_ci

__all__ = ["LayerTest", "TCAVResult", "CAVBank", "fit_cavs", "score_cavs", "resolve_layers", "layer_activations", "layer_gradients", "train_cavs",
           "directional_scores", "tcav_test", "MIN_RUNS"]

#: the paper's test needs at least this many runs against different random sets
MIN_RUNS = 20
SCORES = ("sign", "magnitude")
#: the null runs: the paper's code holds out random_0 as the random concept ("counterpart"), or rotate it
NULLS = ("counterpart", "rotating")


# ------------------------------------------------------------------------------------------- validation
def resolve_layers(model: nn.Module, layers: Sequence[str]) -> List[str]:
    """``layers`` checked against ``model.named_modules()``; unknown names raise with close matches."""
    if isinstance(layers, str):
        layers = [layers]
    if not layers:
        raise ConfigError("TCAV needs at least one layer name (e.g. 'net.block6'); got none")
    names = [n for n, _ in model.named_modules() if n]
    for layer in layers:
        if layer not in names:
            close = difflib.get_close_matches(str(layer), names, n=3, cutoff=0.5)
            hint = f"did you mean {close}?" if close else f"known layers include {names[:12]}"
            raise ConfigError(f"layer {layer!r} does not exist in {type(model).__name__}; {hint}")
    if len(set(layers)) != len(layers):
        raise ConfigError(f"layers {list(layers)} name a layer twice")
    return list(layers)


def _check_images(what: str, images: Tensor, shape: Tuple[int, ...], min_images: int) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise DataError(f"{what}: images must be a (N, C, H, W) tensor, got "
                        f"{getattr(images, 'shape', type(images).__name__)}")
    if tuple(images.shape[1:]) != tuple(shape):
        raise DataError(f"{what}: images of size {tuple(images.shape[1:])} (C, H, W), but the model's inputs are "
                        f"{tuple(shape)}; build the concept sets at the model's size (concept_sets(..., size=...))")
    if images.shape[0] < min_images:
        raise DataError(f"{what}: {images.shape[0]} images, fewer than the {min_images} the test needs; "
                        "use more images per set (n=) or lower min_images")


# ------------------------------------------------------------------------------------------- activations
def _hooks(model: nn.Module, layers: Sequence[str], store: Dict[str, List[Tensor]], keep_grad: bool):
    handles = []
    for layer in layers:
        def hook(_m, _inp, out, layer=layer):
            if not isinstance(out, Tensor):
                raise ModelError(f"layer {layer!r} returns {type(out).__name__}, not a tensor: TCAV needs a "
                                 "layer whose output is one activation tensor")
            if keep_grad:
                out.retain_grad()
            store.setdefault(layer, []).append(out)
        handles.append(model.get_submodule(layer).register_forward_hook(hook))
    return handles


def _forward(model: nn.Module, x: Tensor) -> Tensor:
    try:
        return model(x)
    except RuntimeError as err:
        raise DataError(f"the model failed on images of shape {tuple(x.shape[1:])} (C, H, W): {err}. Check the "
                        "image size and channels the model expects") from err


def layer_activations(model: nn.Module, x: Tensor, layers: Sequence[str], *, batch_size: int = 64,
                      device: Union[str, torch.device] = "cpu") -> Dict[str, Tensor]:
    """Flattened activations ``(N, D)`` (float64, CPU) of every layer in one forward pass per batch."""
    store: Dict[str, List[Tensor]] = {}
    out: Dict[str, List[Tensor]] = {l: [] for l in layers}
    handles = _hooks(model, layers, store, keep_grad=False)
    try:
        with torch.no_grad():
            for start in range(0, x.shape[0], batch_size):
                store.clear()
                _forward(model, x[start:start + batch_size].to(device))
                for l in layers:
                    out[l].append(store[l][0].detach().reshape(store[l][0].shape[0], -1).to("cpu", torch.float64))
    finally:
        for h in handles:
            h.remove()
    return {l: torch.cat(v) for l, v in out.items()}


def layer_gradients(model: nn.Module, x: Tensor, target: Union[int, Tensor], layers: Sequence[str], *,
                    batch_size: int = 64, device: Union[str, torch.device] = "cpu") -> Dict[str, Tensor]:
    """Gradients ``(N, D)`` of the target logit with respect to every layer's activations: one forward and one
    backward pass per batch for all layers."""
    n = x.shape[0]
    tgt = torch.full((n,), int(target), dtype=torch.long) if not isinstance(target, Tensor) else \
        target.reshape(-1).long().cpu()
    if tgt.shape[0] != n:
        raise ConfigError(f"TCAV: {tgt.shape[0]} targets for {n} inputs")
    store: Dict[str, List[Tensor]] = {}
    out: Dict[str, List[Tensor]] = {l: [] for l in layers}
    handles = _hooks(model, layers, store, keep_grad=True)
    try:
        for start in range(0, n, batch_size):
            store.clear()
            with torch.enable_grad():
                xb = x[start:start + batch_size].to(device)
                logits = _forward(model, xb)
                t = tgt[start:start + batch_size].to(logits.device)
                logits.gather(1, t[:, None]).sum().backward()
            for l in layers:
                g = store[l][0].grad
                if g is None:
                    raise ModelError(f"layer {l!r} gets no gradient from the target logit: it does not lie on "
                                     "the path to the output")
                out[l].append(g.detach().reshape(g.shape[0], -1).to("cpu", torch.float64))
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
    return {l: torch.cat(v) for l, v in out.items()}


# ------------------------------------------------------------------------------------------- CAVs
def train_cavs(sets: Sequence[Tensor], pairs: Sequence[Tuple[int, int]], *, ridge: float = 1.0) -> Tensor:
    """CAVs ``(P, D)`` for ``pairs`` of indices into ``sets`` (each ``(n_k, D)``): the weights of a ridge
    classifier (sklearn's ``RidgeClassifier``: least squares on labels +1 for set ``a``, -1 for set ``b``,
    centred features and labels, penalty ``ridge`` times the mean squared row norm) — a linear classifier
    whose solution is exact and deterministic. Every pair is solved in the dual,
    ``w = Xᵀ (X Xᵀ + λI)⁻¹ y`` with ``X`` its ``n_a + n_b`` centred rows, from one Gram matrix of all sets
    (memory M² + P·D for M rows and P pairs), so ``D`` (the flattened layer) can be large.
    Two identical sets give a zero CAV (centred labels are orthogonal to the duplicated rows' span).
    The default ``ridge=1.0`` shrinks strongly towards the difference of the set means: on correlated
    features (channels of one pixel) a weakly penalized fit can flip the sign of the CAV on the features the
    gradient reads, which makes the direction depend on which correlated feature the fit happened to use."""
    if not pairs:
        return torch.zeros(0, sets[0].shape[1] if sets else 0, dtype=torch.float64)
    # one Gram matrix of every row of every set (M x M); each pair's system is a block of it, and its CAV a
    # combination of its rows: memory is M^2 + P x D, never P x rows x D
    pool = torch.cat([s.double() for s in sets])
    starts = [0]
    for s in sets:
        starts.append(starts[-1] + s.shape[0])
    gram = pool @ pool.T
    coef = torch.zeros(len(pairs), pool.shape[0], dtype=torch.float64)
    for i, (a, b) in enumerate(pairs):
        idx = torch.cat([torch.arange(starts[a], starts[a + 1]), torch.arange(starts[b], starts[b + 1])])
        na, n = starts[a + 1] - starts[a], idx.numel()
        centre = torch.eye(n, dtype=torch.float64) - 1.0 / n
        k = centre @ gram[idx][:, idx] @ centre  # Gram of the centred rows
        y = torch.cat([torch.ones(na), -torch.ones(n - na)]).double()
        y = y - y.mean()
        lam = max(ridge * float(torch.diagonal(k).sum()) / n, 1e-12)
        alpha = torch.linalg.solve(k + lam * torch.eye(n, dtype=torch.float64), y)
        coef[i].index_add_(0, idx, centre @ alpha)  # w = (centred rows)^T alpha = rows^T (centre alpha)
    w = coef @ pool
    # an exactly degenerate pair (identical sets) leaves only rounding: call it zero
    ref = pool.abs().amax().clamp(min=1e-300) * coef.abs().sum(1).clamp(min=1e-300)
    return torch.where((w.norm(dim=1) <= 1e-9 * ref)[:, None], torch.zeros_like(w), w)


def directional_scores(grads: Tensor, cavs: Tensor) -> Tuple[Tensor, Tensor]:
    """Sign-count and magnitude TCAV scores ``(P,)`` of the CAVs ``(P, D)`` for gradients ``(N, D)``; NaN for
    a zero CAV (no direction)."""
    dd = grads @ cavs.T  # (N, P)
    sign = (dd > 0).double().mean(0)
    pos = dd.clamp(min=0).sum(0)
    total = dd.abs().sum(0)
    magnitude = torch.where(total > 0, pos / total.clamp(min=1e-300), torch.full_like(pos, float("nan")))
    zero = cavs.abs().amax(1) == 0
    nan = torch.full_like(sign, float("nan"))
    return torch.where(zero, nan, sign), torch.where(zero, nan, magnitude)


def _positive_share(dd: Tensor, zero: Tensor):
    """``rows -> (N,)``: per input, the share of the runs ``rows`` (columns of the directional derivatives
    ``dd`` (N, P)) whose derivative is positive, runs with a zero CAV (``zero`` (P,)) left out (NaN if none is
    left)."""
    def share(rows: slice) -> Tensor:
        keep = ~zero[rows]
        block = (dd[:, rows][:, keep] > 0).double()
        if block.shape[1] == 0:
            return torch.full((dd.shape[0],), float("nan"), dtype=torch.float64)
        return block.mean(1)
    return share


# ------------------------------------------------------------------------------------------- the test
@dataclass
class LayerTest:
    """The test of one concept at one layer."""

    concept: str
    layer: str
    #: the concept's run scores (concept vs random_i), and the null runs' (random_0 vs random_i), (n_runs,)
    scores: Tensor
    random_scores: Tensor
    magnitude: Tensor
    random_magnitude: Tensor
    p_value: float
    p_adjusted: float
    threshold: float
    significant: bool
    summary: Summary
    random_summary: Summary
    reason: str
    #: per explained input, the share of the concept's runs (and of the null runs) in which its directional
    #: derivative is positive (runs with a zero CAV left out): the mean over inputs is the mean sign-count score
    #: over runs, and an input's value depends only on it, the model and the CAVs (re-runnable on a sample)
    per_input: Optional[Tensor] = None
    random_per_input: Optional[Tensor] = None

    def as_dict(self) -> Dict[str, Any]:
        return {"concept": self.concept, "layer": self.layer, "p_value": self.p_value,
                "p_adjusted": self.p_adjusted, "threshold": self.threshold, "significant": self.significant,
                "scores": self.scores.tolist(), "random_scores": self.random_scores.tolist(),
                "magnitude": self.magnitude.tolist(), "random_magnitude": self.random_magnitude.tolist(),
                "summary": self.summary.as_dict(), "random_summary": self.random_summary.as_dict(),
                "reason": self.reason}


@dataclass
class TCAVResult:
    tests: List[LayerTest]
    n_runs: int
    alpha: float
    n_comparisons: int
    score: str
    #: forward passes of the concept/random sets and forward+backward passes of the inputs, per layer group
    passes: Dict[str, int] = field(default_factory=dict)

    def test(self, concept: str, layer: str) -> LayerTest:
        for t in self.tests:
            if t.concept == concept and t.layer == layer:
                return t
        raise KeyError((concept, layer))


def _ttest(a: Tensor, b: Tensor) -> Tuple[float, str]:
    from scipy.stats import ttest_ind

    a, b = a[~torch.isnan(a)], b[~torch.isnan(b)]
    if a.numel() < 2 or b.numel() < 2:
        return 1.0, (f"only {a.numel()} concept and {b.numel()} random runs have a defined score (a zero CAV: "
                     "the concept set equals a random set); not significant")
    p = float(ttest_ind(a.numpy(), b.numpy()).pvalue)
    if p != p:  # both constant and equal: no difference to detect
        return 1.0, "concept and random scores are constant and equal; not significant"
    return p, ""


@dataclass
class CAVBank:
    """The CAVs of every layer for every run: ``cavs[layer]`` ``(P, D)``, concept runs first (concept c, run i
    at ``c * n_runs + i``), then the null runs. They depend on the model up to each layer only, so a model
    randomized *above* the layers reuses them (:func:`score_cavs`)."""

    concepts: List[str]
    layers: List[str]
    cavs: Dict[str, Tensor]
    n_runs: int
    shape: Tuple[int, ...]
    set_forward_batches: int


def _validate(score: str, n_runs: int, alpha: float, null: str) -> None:
    if score not in SCORES:
        raise ConfigError(f"TCAV score must be one of {SCORES}, got {score!r}")
    if isinstance(n_runs, bool) or not isinstance(n_runs, int) or n_runs < MIN_RUNS:
        raise ConfigError(f"n_runs must be an integer >= {MIN_RUNS} (the paper's test), got {n_runs!r}")
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha!r}")
    if null not in NULLS:
        raise ConfigError(f"TCAV null must be one of {NULLS}, got {null!r}")


def fit_cavs(model: nn.Module, concepts: Sequence[Any], randoms: Sequence[Any], layers: Sequence[str], *,
             shape: Tuple[int, ...], n_runs: int = MIN_RUNS, min_images: int = 10, batch_size: int = 64,
             device: Union[str, torch.device] = "cpu", ridge: float = 1.0, null: str = "counterpart",
             dtype: torch.dtype = torch.float32) -> CAVBank:
    """Activations of all concept and random sets at every layer (one forward pass per batch), and every CAV
    of every run (see :func:`tcav_test`)."""
    _validate("sign", n_runs, 0.05, null)
    if not concepts:
        raise ConfigError("TCAV needs at least one concept set")
    if len(randoms) < n_runs + 1:
        raise ConfigError(f"{n_runs} runs need {n_runs + 1} random sets (one held out as the random concept of "
                          f"the null runs), got {len(randoms)}; add random sets or lower n_runs")
    layers = resolve_layers(model, layers)
    randoms = list(randoms)[: n_runs + 1]
    names = [c.name for c in concepts]
    if len(set(names)) != len(names):
        raise ConfigError(f"concept names {names} repeat")
    for s in list(concepts) + randoms:
        _check_images(f"concept set {s.name!r}", s.images, tuple(shape), min_images)
    was_training = model.training
    model.eval()
    try:
        pool = torch.cat([s.images for s in concepts] + [s.images for s in randoms]).to(dtype)
        acts = layer_activations(model, pool, layers, batch_size=batch_size, device=device)
    finally:
        model.train(was_training)
    bounds, start = [], 0
    for s in list(concepts) + randoms:
        bounds.append((start, start + s.images.shape[0]))
        start += s.images.shape[0]
    nc = len(concepts)
    pairs = [(c, nc + i) for c in range(nc) for i in range(1, n_runs + 1)]
    if null == "counterpart":  # the paper's code: random_0 as the concept against random_1..n
        pairs += [(nc, nc + i) for i in range(1, n_runs + 1)]
    else:  # "rotating": random_{i-1} against random_i, so the random concept changes from run to run
        pairs += [(nc + i - 1, nc + i) for i in range(1, n_runs + 1)]
    cavs = {layer: train_cavs([acts[layer][a:b] for a, b in bounds], pairs, ridge=ridge) for layer in layers}
    return CAVBank(names, layers, cavs, n_runs, tuple(shape), -(-pool.shape[0] // batch_size))


def score_cavs(bank: CAVBank, model: nn.Module, inputs: Tensor, target: Union[int, Tensor], *,
               alpha: float = 0.05, seed: int = 0, score: str = "sign", batch_size: int = 64,
               device: Union[str, torch.device] = "cpu", n_comparisons: Optional[int] = None,
               label: str = "") -> TCAVResult:
    """The test of every concept at every layer of ``bank`` for ``model``'s gradients (one forward and one
    backward pass per batch for all layers). ``label`` keys the bootstrap draws (e.g. a randomization step)."""
    _validate(score, bank.n_runs, alpha, "counterpart")
    if tuple(inputs.shape[1:]) != bank.shape:
        raise DataError(f"inputs of size {tuple(inputs.shape[1:])}, but the CAVs were fitted on images of size "
                        f"{bank.shape}")
    was_training = model.training
    model.eval()
    try:
        grads = layer_gradients(model, inputs, target, bank.layers, batch_size=batch_size, device=device)
    finally:
        model.train(was_training)
    n_runs, nc = bank.n_runs, len(bank.concepts)
    m = n_comparisons or nc * len(bank.layers)
    threshold = alpha / m
    tests: List[LayerTest] = []
    for layer in bank.layers:
        sign, mag = directional_scores(grads[layer], bank.cavs[layer])
        positive = _positive_share(grads[layer] @ bank.cavs[layer].T, bank.cavs[layer].abs().amax(1) == 0)
        chosen = sign if score == "sign" else mag
        null = chosen[nc * n_runs:]
        null_mag = mag[nc * n_runs:]
        for c, name in enumerate(bank.concepts):
            run = chosen[c * n_runs:(c + 1) * n_runs]
            p, why = _ttest(run, null)
            p_adj = min(1.0, p * m)
            sig = p < threshold
            reason = why or (f"two-sided t-test of the concept runs against the random runs: p = {p:.3g} "
                             f"{'<' if sig else '>='} {threshold:.3g} (alpha {alpha} / {m} concepts x layers)")
            dropped = int(torch.isnan(run).sum()) + int(torch.isnan(null).sum())
            if dropped and not why:
                reason += (f"; {int(torch.isnan(run).sum())} concept and {int(torch.isnan(null).sum())} random runs "
                           "dropped (zero CAV: the two sets of the run are identical)")
            tests.append(LayerTest(
                name, layer, run.clone(), null.clone(), mag[c * n_runs:(c + 1) * n_runs].clone(),
                null_mag.clone(), p, p_adj, threshold, bool(sig),
                bootstrap_ci(run, seed_parts=(seed, "tcav", label, name, layer)),
                bootstrap_ci(null, seed_parts=(seed, "tcav", label, "random", layer)), reason,
                positive(slice(c * n_runs, (c + 1) * n_runs)), positive(slice(nc * n_runs, None))))
    return TCAVResult(tests, n_runs, alpha, m, score,
                      {"set_forward_batches": bank.set_forward_batches,
                       "input_forward_backward_batches": -(-inputs.shape[0] // batch_size)})


def tcav_test(model: nn.Module, inputs: Tensor, target: Union[int, Tensor], concepts: Sequence[Any],
              randoms: Sequence[Any], layers: Sequence[str], *, n_runs: int = MIN_RUNS, alpha: float = 0.05,
              seed: int = 0, score: str = "sign", min_images: int = 10, batch_size: int = 64,
              device: Union[str, torch.device] = "cpu", ridge: float = 1.0,
              n_comparisons: Optional[int] = None, null: str = "counterpart") -> TCAVResult:
    """The paper's test of every concept at every layer (see the module docstring):
    :func:`fit_cavs` then :func:`score_cavs`.

    ``concepts`` and ``randoms``: :class:`~sanitycheck.data.concepts.ConceptSet` (``name``, ``images``); the
    test needs ``n_runs + 1`` random sets (``randoms[0]`` is the held-out random concept of the null runs).
    ``n_comparisons``: the Bonferroni factor (default: concepts × layers). ``null``: ``"counterpart"`` (the
    paper's code: random_0 against random_1..n) or ``"rotating"`` (random_{i-1} against random_i)."""
    _validate(score, n_runs, alpha, null)
    bank = fit_cavs(model, concepts, randoms, layers, shape=tuple(inputs.shape[1:]), n_runs=n_runs,
                    min_images=min_images, batch_size=batch_size, device=device, ridge=ridge, null=null,
                    dtype=inputs.dtype)
    return score_cavs(bank, model, inputs, target, alpha=alpha, seed=seed, score=score, batch_size=batch_size,
                      device=device, n_comparisons=n_comparisons)
