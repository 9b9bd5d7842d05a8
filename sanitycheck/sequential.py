"""Anytime-valid confidence sequences for a bounded mean, and a sequential gate built on them.

A gate that adds images in rounds and re-reads a fixed-n confidence interval after every round
rejects a true null far more often than the interval's nominal level (every peek is another chance
to cross). A *confidence sequence* (CS) is a sequence of intervals ``C_1, C_2, ...`` whose coverage
holds uniformly over time, ``P(exists t: mu not in C_t) <= alpha``, so it may be read after every
round and the run stopped at any data-dependent time.

The CS here is the **hedged-capital betting CS with the predictable plug-in bet** of

    I. Waudby-Smith and A. Ramdas (2023), "Estimating means of bounded random variables by betting",
    Journal of the Royal Statistical Society Series B 86(1):1-27 (arXiv:2010.09686), Section 4
    ("hedged capital process", Theorem 3) with the predictable plug-in of eq. (26)/Remark 3.

Exact variant (after rescaling the data from ``[lower, upper]`` to ``[0, 1]``; ``t = 1, 2, ...``):

* plug-in estimates ``mu_hat_t = (1/2 + sum_{i<=t} X_i) / (t + 1)`` and
  ``sigma2_hat_t = (1/4 + sum_{i<=t} (X_i - mu_hat_i)^2) / (t + 1)`` (``sigma2_hat_0 = 1/4``);
* bet size ``lambda_dot_t = sqrt(2 log(2/alpha) / (sigma2_hat_{t-1} * t * log(1 + t)))`` (predictable:
  it uses data up to ``t - 1`` only);
* truncation ``lambda_t^+(m) = min(lambda_dot_t, c/m)``, ``lambda_t^-(m) = min(lambda_dot_t, c/(1-m))``
  with ``c = 1/2`` by default (the paper suggests 1/2 or 3/4), so every wealth factor is >= 1 - c > 0;
* capital ``K_t^+(m) = prod_i (1 + lambda_i^+(m) (X_i - m))``, ``K_t^-(m) = prod_i (1 - lambda_i^-(m) (X_i - m))``,
  hedged ``K_t(m) = max(theta K_t^+(m), (1 - theta) K_t^-(m))`` with ``theta = 1/2``;
* ``C_t = {m in [0, 1]: K_t(m) < 1/alpha}``, intersected over time (the running intersection), so the
  CS only shrinks. At the true mean ``theta K^+ + (1-theta) K^-`` is a nonnegative martingale and
  bounds ``K_t``, so by Ville's inequality the CS misses the true mean at *any* time with probability
  at most ``alpha``.

``K_t(m)`` is quasi-convex in ``m`` (``K^+`` is non-increasing, ``K^-`` non-decreasing), so ``C_t`` is an
interval. It is evaluated on a grid of candidate means, vectorized over the grid (and over a batch of
independent streams) with cumulative log-sums over time; the reported bounds are widened outward by
one grid step, so the grid can only make the interval wider (more conservative), never narrower.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterable, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .errors import ConfigError, DataError

__all__ = ["BettingCS", "betting_cs", "log_capital", "SequentialDecision", "sequential_decision",
           "sequential_decision_steps", "DIRECTIONS"]

DIRECTIONS = ("below", "above")  # the side of the threshold on which a check passes (as VerdictRule)
_CHUNK_ELEMENTS = 1 << 22  # (batch x steps x grid) cells per vectorized chunk (bounds memory)


def _check_params(alpha: float, lower: float, upper: float, c: float, theta: float, grid_size: int) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < float(alpha) < 1.0:
        raise ConfigError(f"alpha must be strictly between 0 and 1 (e.g. 0.05 for 95% confidence), got {alpha!r}")
    for name, v in (("lower", lower), ("upper", upper)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise ConfigError(f"{name} must be a finite number (the bound of the scores), got {v!r}")
    if not float(lower) < float(upper):
        raise ConfigError(f"lower must be below upper (the range the scores are bounded in), got "
                          f"lower={lower!r}, upper={upper!r}")
    if not 0.0 < float(c) < 1.0:
        raise ConfigError(f"c (the bet truncation) must be strictly between 0 and 1 (1/2 or 3/4 are the "
                          f"paper's choices), got {c!r}")
    if not 0.0 < float(theta) < 1.0:
        raise ConfigError(f"theta (the hedging weight) must be strictly between 0 and 1 (default 1/2), got {theta!r}")
    if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 3:
        raise ConfigError(f"grid_size must be an integer >= 3 (candidate means; 1000 is typical), got {grid_size!r}")


def _as_values(x: Any, lower: float, upper: float, dtype: torch.dtype, device) -> Tensor:
    """``x`` as a tensor of ``dtype``, validated to lie in ``[lower, upper]`` (NaN is an error)."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
    if t.is_complex() or t.dtype == torch.bool:
        raise DataError(f"scores must be real numbers, got a tensor of dtype {t.dtype}")
    t = t.to(device=device, dtype=dtype)
    bad = torch.isnan(t) | (t < lower) | (t > upper)
    if bool(bad.any()):
        first = t[bad].reshape(-1)[0].item()
        where = tuple(int(i) for i in torch.nonzero(bad)[0].tolist())
        raise DataError(f"score {first!r} at index {where} lies outside [{lower}, {upper}], the range the "
                        f"confidence sequence assumes; pass the scores' true bounds as lower/upper (NaN "
                        f"scores are undefined: drop them before this call)")
    return t


class BettingCS:
    """Online hedged-capital betting CS for ``batch_shape`` independent streams of bounded scores.

    ``update(x)`` takes the next ``k`` scores of every stream, ``x`` of shape ``batch_shape + (k,)``, and
    returns ``(low, high)`` of that shape: the CS after each of those steps (in the scores' units).
    ``low``/``high``/``n`` give the current state. See the module docstring for the exact variant.
    """

    def __init__(self, *, alpha: float = 0.05, lower: float = -1.0, upper: float = 1.0, grid_size: int = 1000,
                 c: float = 0.5, theta: float = 0.5, running_intersection: bool = True,
                 batch_shape: Tuple[int, ...] = (), dtype: torch.dtype = torch.float64,
                 device: torch.device | str = "cpu", candidates: Optional[Tensor] = None):
        _check_params(alpha, lower, upper, c, theta, grid_size)
        self.alpha, self.lower, self.upper = float(alpha), float(lower), float(upper)
        self.c, self.theta, self.grid_size = float(c), float(theta), int(grid_size)
        self.running_intersection = bool(running_intersection)
        self.batch_shape = tuple(int(b) for b in batch_shape)
        self.dtype, self.device = dtype, torch.device(device)
        if candidates is None:
            self.grid = torch.linspace(0.0, 1.0, self.grid_size, dtype=dtype, device=self.device)
        else:  # explicit candidate means (scores' units): used by log_capital, not for intervals
            cand = candidates.to(dtype=dtype, device=self.device).reshape(-1)
            self.grid = (cand - self.lower) / (self.upper - self.lower)
            self.grid_size = self.grid.numel()
        self._log_threshold = math.log(1.0 / self.alpha)
        self._log_bet_num = 2.0 * math.log(2.0 / self.alpha)
        zeros_b = torch.zeros(self.batch_shape, dtype=dtype, device=self.device)
        zeros_bg = torch.zeros(self.batch_shape + (self.grid_size,), dtype=dtype, device=self.device)
        self.n = 0
        self._sum_x = zeros_b.clone()
        self._sum_sq = zeros_b.clone()
        self._sigma2 = zeros_b + 0.25                     # sigma2_hat_0
        self._log_kp = zeros_bg.clone()                  # log K^+_t(m)
        self._log_km = zeros_bg.clone()                  # log K^-_t(m)
        # max_s log K_s(m), from K_0 = max(theta, 1 - theta)
        self._runmax = zeros_bg + math.log(max(self.theta, 1.0 - self.theta))
        self.low = torch.full(self.batch_shape, self.lower, dtype=dtype, device=self.device)
        self.high = torch.full(self.batch_shape, self.upper, dtype=dtype, device=self.device)

    def _bounds(self, stat: Tensor) -> Tuple[Tensor, Tensor]:
        """Grid statistic ``(..., G)`` -> widened interval bounds ``(...)`` in the scores' units."""
        g = self.grid_size
        inside = stat < self._log_threshold
        any_in = inside.any(dim=-1)
        idx = torch.arange(g, device=self.device)
        first = torch.where(inside, idx, g).amin(dim=-1)
        last = torch.where(inside, idx, -1).amax(dim=-1)
        # an empty grid set (the interval fell between two grid points, or the CS is empty): keep the
        # least-rejected grid point; K is quasi-convex, so its neighbours bracket any continuum remainder
        best = stat.argmin(dim=-1)
        first = torch.where(any_in, first, best)
        last = torch.where(any_in, last, best)
        lo = self.grid[(first - 1).clamp(min=0)]
        hi = self.grid[(last + 1).clamp(max=g - 1)]
        span = self.upper - self.lower
        return self.lower + span * lo, self.lower + span * hi

    def update(self, x: Any) -> Tuple[Tensor, Tensor]:
        x = _as_values(x, self.lower, self.upper, self.dtype, self.device)
        if x.dim() == len(self.batch_shape):
            x = x.unsqueeze(-1)
        if tuple(x.shape[:-1]) != self.batch_shape:
            raise DataError(f"scores of shape {tuple(x.shape)} do not match batch_shape {self.batch_shape} "
                            f"(expected batch_shape + (k,) for k new scores per stream)")
        k = x.shape[-1]
        y = (x - self.lower) / (self.upper - self.lower)  # in [0, 1]
        per_step = max(1, _CHUNK_ELEMENTS // max(1, int(np.prod(self.batch_shape, dtype=np.int64)) * self.grid_size))
        lows, highs = [], []
        for s in range(0, k, per_step):
            lo, hi = self._bounds(self._update_chunk(y[..., s:s + per_step]))
            if self.running_intersection:
                lo, hi = self._intersect(lo, hi)
            self.low, self.high = lo[..., -1], hi[..., -1]
            lows.append(lo)
            highs.append(hi)
        if k == 0:
            empty = torch.empty(self.batch_shape + (0,), dtype=self.dtype, device=self.device)
            return empty, empty.clone()
        return torch.cat(lows, dim=-1), torch.cat(highs, dim=-1)

    def _intersect(self, lo: Tensor, hi: Tensor) -> Tuple[Tensor, Tensor]:
        """Running intersection of the per-step intervals ``(..., k)`` with the state's interval.

        If it becomes empty (possible only on an event of probability <= alpha: no single mean in
        ``[lower, upper]`` is consistent with the data at this confidence, e.g. a drifting stream), the CS
        freezes at one point: the midpoint of the crossing bounds, clamped into the last non-empty interval,
        so the sequence stays nested and ``low <= high`` always.
        """
        prev_lo, prev_hi = self.low.unsqueeze(-1), self.high.unsqueeze(-1)
        lo = torch.maximum(torch.cummax(lo, dim=-1).values, prev_lo)
        hi = torch.minimum(torch.cummin(hi, dim=-1).values, prev_hi)
        inv = lo > hi  # once empty, empty from then on (lo only rises, hi only falls)
        if bool(inv.any()):
            k = lo.shape[-1]
            first = torch.where(inv.any(dim=-1), inv.to(torch.int64).argmax(dim=-1), k - 1).unsqueeze(-1)
            before = (first - 1).clamp(min=0)
            was_lo = torch.where(first == 0, prev_lo, lo.gather(-1, before))
            was_hi = torch.where(first == 0, prev_hi, hi.gather(-1, before))
            point = (0.5 * (lo.gather(-1, first) + hi.gather(-1, first))).clamp(min=was_lo, max=was_hi)
            lo = torch.where(inv, point, lo)
            hi = torch.where(inv, point, hi)
        return lo, hi

    def _update_chunk(self, y: Tensor) -> Tensor:
        """Advance ``k`` steps of ``y`` (in [0, 1]); return the grid statistic ``(..., k, G)`` (log capital,
        or its running max under the running intersection)."""
        k = y.shape[-1]
        t = self.n + torch.arange(1, k + 1, dtype=self.dtype, device=self.device)  # time index of each step
        cum_x = self._sum_x.unsqueeze(-1) + torch.cumsum(y, dim=-1)
        mu_hat = (0.5 + cum_x) / (t + 1.0)                                        # mu_hat_t (includes X_t)
        cum_sq = self._sum_sq.unsqueeze(-1) + torch.cumsum((y - mu_hat) ** 2, dim=-1)
        sigma2 = (0.25 + cum_sq) / (t + 1.0)                                      # sigma2_hat_t
        sigma2_prev = torch.cat([self._sigma2.unsqueeze(-1), sigma2[..., :-1]], dim=-1)  # predictable
        lam_dot = torch.sqrt(self._log_bet_num / (sigma2_prev * t * torch.log1p(t)))      # (..., k)
        m = self.grid
        cap_p = self.c / m            # inf at m = 0: no truncation needed there
        cap_m = self.c / (1.0 - m)    # inf at m = 1
        lam = lam_dot.unsqueeze(-1)
        d = y.unsqueeze(-1) - m                                                   # (..., k, G)
        log_kp = self._log_kp.unsqueeze(-2) + torch.cumsum(torch.log1p(torch.minimum(lam, cap_p) * d), dim=-2)
        log_km = self._log_km.unsqueeze(-2) + torch.cumsum(torch.log1p(-torch.minimum(lam, cap_m) * d), dim=-2)
        log_k = torch.maximum(math.log(self.theta) + log_kp, math.log(1.0 - self.theta) + log_km)
        if self.running_intersection:
            stat = torch.maximum(self._runmax.unsqueeze(-2), torch.cummax(log_k, dim=-2).values)
            self._runmax = stat[..., -1, :]
        else:
            stat = log_k
        self._log_kp, self._log_km = log_kp[..., -1, :], log_km[..., -1, :]
        self._sum_x, self._sum_sq, self._sigma2 = cum_x[..., -1], cum_sq[..., -1], sigma2[..., -1]
        self.n += k
        return stat


def betting_cs(x: Any, *, alpha: float = 0.05, lower: float = -1.0, upper: float = 1.0, grid_size: int = 1000,
               c: float = 0.5, theta: float = 0.5, running_intersection: bool = True, per_prefix: bool = True,
               dtype: torch.dtype = torch.float64) -> Tuple[Tensor, Tensor]:
    """Hedged-capital betting CS (Waudby-Smith & Ramdas 2023; see the module docstring) for the mean of ``x``.

    ``x``: scores in ``[lower, upper]``, shape ``(n,)`` or ``(*batch, n)`` (independent streams along the
    batch dimensions, time along the last). Returns ``(low, high)`` tensors: per prefix (shape of ``x``)
    when ``per_prefix``, else for the whole sample (shape ``batch``). Valid at ``1 - alpha`` uniformly
    over time: reading it after every sample does not inflate the error rate.
    Raises :class:`~sanitycheck.errors.DataError` for a score outside ``[lower, upper]`` or NaN.
    """
    _check_params(alpha, lower, upper, c, theta, grid_size)
    xt = _as_values(x, float(lower), float(upper), dtype, "cpu" if not isinstance(x, Tensor) else x.device)
    if xt.dim() == 0:
        xt = xt.reshape(1)
    cs = BettingCS(alpha=alpha, lower=lower, upper=upper, grid_size=grid_size, c=c, theta=theta,
                   running_intersection=running_intersection, batch_shape=tuple(xt.shape[:-1]), dtype=dtype,
                   device=xt.device)
    lo, hi = cs.update(xt)
    return (lo, hi) if per_prefix else (cs.low, cs.high)


def log_capital(x: Any, m: Any, *, alpha: float = 0.05, lower: float = -1.0, upper: float = 1.0, c: float = 0.5,
                theta: float = 0.5, dtype: torch.dtype = torch.float64) -> Tensor:
    """``log K_t(m)`` per prefix: the hedged capital of the bettor against candidate mean(s) ``m``.

    ``m`` in the scores' units (scalar or 1-D). Returns shape ``x.shape + (len(m),)`` (``x.shape`` for a
    scalar ``m``). The CS excludes ``m`` at time ``t`` exactly when ``log K_t(m) >= log(1/alpha)``, so
    "the CS ever excludes the true mean" is ``cummax(log_capital(x, mu)) >= log(1/alpha)`` — an exact,
    grid-free check of coverage.
    """
    _check_params(alpha, lower, upper, c, theta, 3)
    xt = _as_values(x, float(lower), float(upper), dtype, "cpu" if not isinstance(x, Tensor) else x.device)
    if xt.dim() == 0:
        xt = xt.reshape(1)
    mt = torch.as_tensor(m, dtype=dtype, device=xt.device)
    scalar = mt.dim() == 0
    mt = mt.reshape(-1)
    if bool(((mt < lower) | (mt > upper) | torch.isnan(mt)).any()):
        raise ConfigError(f"candidate means {mt.tolist()} must lie in [{lower}, {upper}]")
    cs = BettingCS(alpha=alpha, lower=lower, upper=upper, c=c, theta=theta, running_intersection=False,
                   batch_shape=tuple(xt.shape[:-1]), dtype=dtype, device=xt.device, candidates=mt)
    y = (xt - float(lower)) / (float(upper) - float(lower))
    per_step = max(1, _CHUNK_ELEMENTS // max(1, int(np.prod(cs.batch_shape, dtype=np.int64)) * cs.grid_size))
    parts = [cs._update_chunk(y[..., s:s + per_step]) for s in range(0, y.shape[-1], per_step)]
    out = torch.cat(parts, dim=-2) if parts else torch.zeros(xt.shape + (cs.grid_size,), dtype=dtype)
    return out[..., 0] if scalar else out


@dataclass(frozen=True)
class SequentialDecision:
    """Outcome of :func:`sequential_decision`.

    ``status``: ``pass`` / ``fail`` (decided) or ``undecided`` (the CS still straddles the threshold when
    the budget was spent or the rounds ran out); ``stop``: ``decided``, ``budget`` or ``exhausted``;
    ``rounds``/``n``: rounds and scores consumed; ``ci_low``/``ci_high``: the CS when it stopped.
    """

    status: str
    stop: str
    rounds: int
    n: int
    ci_low: float
    ci_high: float
    threshold: float
    direction: str
    alpha: float
    reason: str
    step: Optional[int] = None  # sequential_decision_steps: the step that decided (or came closest to failing)

    @property
    def decided(self) -> bool:
        return self.status in ("pass", "fail")

    def as_dict(self) -> Dict[str, object]:
        return asdict(self)


def _check_gate(threshold: float, direction: str, lower: float, upper: float, budget: Optional[int]) -> None:
    """The gate's arguments: a known direction, a threshold strictly inside the bounds, a positive budget."""
    if direction not in DIRECTIONS:
        raise ConfigError(f"unknown direction {direction!r}; use one of {DIRECTIONS} (the side of the "
                          f"threshold on which the check passes)")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
            or not float(lower) < float(threshold) < float(upper):
        raise ConfigError(f"threshold must be a number strictly inside ({lower}, {upper}), got {threshold!r}")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise ConfigError(f"budget must be a positive integer (the most scores to consume) or None, got {budget!r}")


def sequential_decision(x_rounds: Iterable[Any], threshold: float, direction: str = "below", alpha: float = 0.05,
                        *, lower: float = -1.0, upper: float = 1.0, budget: Optional[int] = None,
                        grid_size: int = 1000, c: float = 0.5, theta: float = 0.5) -> SequentialDecision:
    """Feed rounds of scores until the betting CS decides the verdict, or the budget is spent.

    ``x_rounds``: an iterable of 1-D score batches (consumed lazily: a generator that evaluates the model
    per round stops being evaluated once decided). ``direction``: the side of ``threshold`` on which the
    check passes (as :class:`sanitycheck.results.VerdictRule`): for ``"below"`` the verdict is ``pass`` at
    the first round whose CS lies wholly below the threshold (``high < threshold``) and ``fail`` when it
    lies wholly at or above it (``low >= threshold``); ``"above"`` mirrors this (``pass``: ``low >
    threshold``; ``fail``: ``high <= threshold``). ``budget``: the most scores to consume (rounds are read
    whole; the run stops after the round that reaches it). Because the CS is anytime-valid, the chance of
    a wrong decided verdict is at most ``alpha`` however many rounds are read.
    """
    _check_params(alpha, lower, upper, c, theta, grid_size)
    _check_gate(threshold, direction, lower, upper, budget)
    threshold = float(threshold)
    cs = BettingCS(alpha=alpha, lower=lower, upper=upper, grid_size=grid_size, c=c, theta=theta)
    conf = f"{100 * (1 - alpha):g}% confidence sequence"
    rounds = 0

    def result(status: str, stop: str, why: str) -> SequentialDecision:
        lo, hi = float(cs.low), float(cs.high)
        return SequentialDecision(status, stop, rounds, cs.n, lo, hi, threshold, direction, float(alpha),
                                  f"{why}: after {rounds} round(s), {cs.n} score(s), the {conf} is "
                                  f"[{lo:.3f}, {hi:.3f}] (threshold {threshold:.3f}, pass {direction})")

    for batch in x_rounds:
        xb = torch.as_tensor(np.asarray(batch) if not isinstance(batch, Tensor) else batch).reshape(-1)
        if xb.numel() == 0:
            continue
        cs.update(xb)
        rounds += 1
        lo, hi = float(cs.low), float(cs.high)
        if hi < threshold:
            side = "below"
        elif lo > threshold or (lo >= threshold and direction == "below"):
            side = "above"
        elif hi <= threshold and direction == "above":
            side = "below"
        else:
            side = None
        if side is not None:
            status = "pass" if side == direction else "fail"
            where = "wholly below" if side == "below" else "wholly above"
            return result(status, "decided", f"{status}, decided: the interval lies {where} the threshold")
        if budget is not None and cs.n >= budget:
            return result("undecided", "budget", f"undecided: the budget of {budget} scores is spent and the "
                                                 f"interval still straddles the threshold")
    return result("undecided", "exhausted", "undecided: the rounds ran out and the interval still straddles the "
                                            "threshold")


def sequential_decision_steps(x_rounds: Iterable[Any], threshold: float, direction: str = "below",
                              alpha: float = 0.05, *, lower: float = -1.0, upper: float = 1.0,
                              budget: Optional[int] = None, grid_size: int = 1000, c: float = 0.5,
                              theta: float = 0.5) -> SequentialDecision:
    """The all-steps verdict of a cascade (every step must pass), decided round by round.

    ``x_rounds``: an iterable of ``(S, k)`` score batches: ``k`` new images' scores at each of the ``S``
    steps (the same images at every step). One betting CS per step, each at ``alpha / S`` (Bonferroni: the
    steps are dependent, so the family-wise chance of any wrong decided verdict stays at most ``alpha``).
    ``fail`` at the first round where some step's CS lies wholly on the failing side (``step``: the first
    such step, 0-based); ``pass`` once every step's CS lies wholly on the passing side; otherwise
    ``undecided`` when the budget (scores per step) is spent or the rounds run out. ``ci_low``/``ci_high``
    are the deciding step's CS (for ``pass`` and ``undecided``: the step whose CS reaches furthest towards
    the failing side).
    """
    _check_params(alpha, lower, upper, c, theta, grid_size)
    _check_gate(threshold, direction, lower, upper, budget)
    threshold, below = float(threshold), direction == "below"
    cs: Optional[BettingCS] = None
    rounds = 0

    def result(status: str, stop: str, why: str, step: Optional[int]) -> SequentialDecision:
        if cs is None:
            return SequentialDecision(status, stop, 0, 0, float(lower), float(upper), threshold, direction,
                                      float(alpha), f"{why}: no rounds were given", None)
        if step is None:  # the step closest to failing
            step = int(cs.high.argmax()) if below else int(cs.low.argmin())
        lo, hi = float(cs.low[step]), float(cs.high[step])
        n_steps = cs.batch_shape[0]
        conf = f"{100 * (1 - alpha):g}% family-wise confidence sequences ({n_steps} steps at alpha/{n_steps})"
        return SequentialDecision(status, stop, rounds, cs.n, lo, hi, threshold, direction, float(alpha),
                                  f"{why}: after {rounds} round(s), {cs.n} score(s) per step, step {step} has "
                                  f"[{lo:.3f}, {hi:.3f}] in the {conf} (threshold {threshold:.3f}, pass {direction})",
                                  step)

    for batch in x_rounds:
        xb = torch.as_tensor(np.asarray(batch) if not isinstance(batch, Tensor) else batch)
        if xb.dim() != 2:
            raise DataError(f"each round must be an (S steps, k images) array of scores, got shape {tuple(xb.shape)}")
        if cs is None:
            cs = BettingCS(alpha=alpha / xb.shape[0], lower=lower, upper=upper, grid_size=grid_size, c=c, theta=theta,
                           batch_shape=(xb.shape[0],))
        if xb.shape[-1] == 0:
            continue
        cs.update(xb)
        rounds += 1
        failing = (cs.low >= threshold) if below else (cs.high <= threshold)
        if bool(failing.any()):
            step = int(torch.nonzero(failing)[0, 0])
            return result("fail", "decided", f"fail, decided: step {step}'s interval lies wholly "
                                             f"{'at or above' if below else 'at or below'} the threshold", step)
        passing = (cs.high < threshold) if below else (cs.low > threshold)
        if bool(passing.all()):
            return result("pass", "decided", f"pass, decided: every step's interval lies wholly {direction} "
                                             f"the threshold", None)
        if budget is not None and cs.n >= budget:
            return result("undecided", "budget", f"undecided: the budget of {budget} scores per step is spent "
                                                 f"and some step's interval still straddles the threshold", None)
    return result("undecided", "exhausted", "undecided: the rounds ran out and some step's interval still "
                                            "straddles the threshold", None)
