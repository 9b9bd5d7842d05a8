"""Anytime-valid betting confidence sequences (sanitycheck.sequential): exact variant, coverage under
continuous peeking, the gate's false-failure rate at the threshold (against a re-read fixed-n CI), and
that the sequence shrinks and decides. Simulations are seeded and vectorized over replications."""

from __future__ import annotations

import math

import pytest
import torch

from sanitycheck.errors import ConfigError, DataError
from sanitycheck.sequential import (BettingCS, betting_cs, log_capital, sequential_decision,
                                   sequential_decision_steps)
from sanitycheck.stats import bootstrap_ci_many

ALPHA = 0.05
R = 400          # Monte-Carlo replications
# one-sided Monte-Carlo slack: 3 standard errors of a rate alpha estimated from R replications
SLACK = 3 * math.sqrt(ALPHA * (1 - ALPHA) / R)   # ~0.033


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _beta(a: float, b: float, shape, seed: int) -> torch.Tensor:
    """Beta(a, b) for integer a, b from a seeded generator: the a-th order statistic of a+b-1 uniforms."""
    g = _gen(seed)
    u = torch.rand(tuple(shape) + (a + b - 1,), generator=g, dtype=torch.float64)
    return u.sort(dim=-1).values[..., a - 1]   # a-th order statistic of a+b-1 uniforms ~ Beta(a, b)


# ---------------------------------------------------------------- the exact variant, by hand

def test_log_capital_matches_the_papers_formulas_by_hand():
    x = [0.9, 0.2, 0.6, 1.0]      # in [0, 1]
    m, c, theta = 0.4, 0.5, 0.5
    s_x, s_sq, sigma2_prev, kp, km, want = 0.0, 0.0, 0.25, 1.0, 1.0, []
    for t, xi in enumerate(x, start=1):
        lam_dot = math.sqrt(2 * math.log(2 / ALPHA) / (sigma2_prev * t * math.log(1 + t)))
        kp *= 1 + min(lam_dot, c / m) * (xi - m)
        km *= 1 - min(lam_dot, c / (1 - m)) * (xi - m)
        want.append(math.log(max(theta * kp, (1 - theta) * km)))
        s_x += xi
        mu_hat = (0.5 + s_x) / (t + 1)
        s_sq += (xi - mu_hat) ** 2
        sigma2_prev = (0.25 + s_sq) / (t + 1)
    got = log_capital(torch.tensor(x, dtype=torch.float64), m, lower=0.0, upper=1.0, c=c, theta=theta)
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    # rescaling [lower, upper] -> [0, 1] is part of the method: the same capital in other units
    got2 = log_capital(torch.tensor(x, dtype=torch.float64) * 4 - 3, m * 4 - 3, lower=-3.0, upper=1.0, c=c, theta=theta)
    assert torch.allclose(got2, got, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- coverage under continuous peeking

@pytest.mark.parametrize("name", ["bernoulli", "beta", "skewed"])
def test_capital_at_the_true_mean_ever_crosses_at_most_alpha(name):
    n = 500
    g = _gen({"bernoulli": 1, "beta": 2, "skewed": 3}[name])
    if name == "bernoulli":
        x, mu = (torch.rand(R, n, generator=g, dtype=torch.float64) < 0.3).double(), 0.3
    elif name == "beta":
        x, mu = _beta(2, 5, (R, n), 2), 2 / 7
    else:  # U^4: mass piled at 0 with a long right tail, mean 1/5
        x, mu = torch.rand(R, n, generator=g, dtype=torch.float64) ** 4, 0.2
    crossed = log_capital(x, mu, lower=0.0, upper=1.0).cummax(dim=-1).values[:, -1] >= math.log(1 / ALPHA)
    rate = crossed.double().mean().item()
    assert rate <= ALPHA + SLACK, f"{name}: the CS excluded the true mean in {rate:.3f} of runs"
    # power: against a wrong mean (0.1 off) it rejects in most runs (0.82 to 1.0 here), so the check can fail
    wrong = log_capital(x, mu + 0.1, lower=0.0, upper=1.0).cummax(dim=-1).values[:, -1] >= math.log(1 / ALPHA)
    assert wrong.double().mean().item() > 0.5


def test_betting_cs_intervals_cover_uniformly_and_only_exclude_where_the_capital_crossed():
    n, mu = 500, 2 * (2 / 7) - 1                 # Beta(2, 5) mapped to [-1, 1]
    x = 2 * _beta(2, 5, (R, n), 7) - 1
    low, high = betting_cs(x, grid_size=201)
    assert low.shape == high.shape == (R, n)
    missed = ((low > mu) | (high < mu)).any(dim=-1)
    assert missed.double().mean().item() <= ALPHA + SLACK
    # the grid only widens: an interval excludes mu only where the exact capital at mu crossed 1/alpha
    crossed = log_capital(x, mu).cummax(dim=-1).values >= math.log(1 / ALPHA)
    assert not bool(((low > mu) | (high < mu))[~crossed].any())
    # running intersection: the sequence only shrinks
    assert bool((low.diff(dim=-1) >= 0).all()) and bool((high.diff(dim=-1) <= 0).all())


# ---------------------------------------------------------------- the gate at the threshold

def _at_threshold_scores(rounds: int, round_size: int, seed: int):
    """Scores in [-1, 1] with mean exactly 0.3 (2 * Beta(13, 7) - 1: mean 2 * 0.65 - 1)."""
    return 2 * _beta(13, 7, (R, rounds * round_size), seed) - 1, 0.3


def test_gate_false_failure_rate_at_the_threshold_stays_below_alpha_while_a_reread_ci_does_not():
    round_size, rounds = 16, 32
    x, tau = _at_threshold_scores(rounds, round_size, 11)
    ends = torch.arange(round_size - 1, rounds * round_size, round_size)   # the gate peeks after every round
    cs = BettingCS(alpha=ALPHA, lower=-1.0, upper=1.0, grid_size=201, batch_shape=(R,))
    low, high = (b[:, ends] for b in cs.update(x))
    cs_fail = (low >= tau).any(dim=-1)                     # direction "below": fail when wholly at/above tau
    cs_any = ((low >= tau) | (high < tau)).any(dim=-1)     # any decided verdict is wrong at the threshold
    assert cs_fail.double().mean().item() <= ALPHA + SLACK
    assert cs_any.double().mean().item() <= ALPHA + SLACK

    # contrast 1: the fixed-n 95% normal CI re-read after every round
    n = torch.arange(1, x.shape[1] + 1, dtype=torch.float64)
    mean = x.cumsum(-1) / n
    var = ((x ** 2).cumsum(-1) / n - mean ** 2) * n / (n - 1).clamp(min=1)
    normal_low = (mean - 1.959964 * (var.clamp(min=0) / n).sqrt())[:, ends]
    normal_fail = (normal_low >= tau).any(dim=-1).double().mean().item()
    assert normal_fail > 2 * ALPHA, f"re-read normal CI false-failure rate {normal_fail:.3f}"
    # contrast 2: the project's own percentile bootstrap CI (sanitycheck.stats) re-read after every round
    boot_fail = torch.zeros(R, dtype=torch.bool)
    for r in range(1, rounds + 1):
        rows = bootstrap_ci_many(x[:, :r * round_size], seed_parts=(0, "peek", r), n_resamples=1000)
        boot_fail |= torch.tensor([s.ci_low >= tau for s in rows])
    boot_rate = boot_fail.double().mean().item()
    assert boot_rate > 2 * ALPHA, f"re-read bootstrap CI false-failure rate {boot_rate:.3f}"
    assert boot_rate > cs_fail.double().mean().item() + 0.1

    # the public one-stream API decides exactly as the batched path, on a few replications
    for i in range(8):
        d = sequential_decision((x[i, j:j + round_size] for j in range(0, x.shape[1], round_size)), tau,
                                "below", ALPHA, grid_size=201)
        assert (d.status == "fail") == bool(cs_fail[i])
        if not cs_any[i]:
            assert (d.status, d.stop, d.n, d.rounds) == ("undecided", "exhausted", rounds * round_size, rounds)


# ---------------------------------------------------------------- the sequence shrinks and decides

def test_a_method_0_2_below_the_threshold_is_decided_within_a_few_rounds_and_the_width_shrinks():
    g = _gen(5)
    x = (torch.rand(512, generator=g, dtype=torch.float64) * 0.8 - 0.3)   # uniform on [-0.3, 0.5], mean 0.1
    tau = 0.3
    pulled = []

    def rounds():
        for j in range(0, 512, 16):
            pulled.append(j)
            yield x[j:j + 16]

    d = sequential_decision(rounds(), tau, "below")
    assert d.status == "pass" and d.stop == "decided" and d.decided
    assert d.rounds <= 8 and d.n == 16 * d.rounds and d.ci_high < tau <= 0.5
    assert len(pulled) == d.rounds            # lazily consumed: no round is evaluated after the decision
    assert "wholly below" in d.reason and str(d.n) in d.reason
    mirrored = sequential_decision((x[j:j + 16] for j in range(0, 512, 16)), tau, "above")
    assert mirrored.status == "fail" and mirrored.n == d.n

    low, high = betting_cs(x)
    width = high - low
    assert bool((width.diff() <= 0).all())
    assert width[511] < 0.5 * width[31] < width[15]
    assert low[511] <= x.mean() <= high[511]
    one = betting_cs(x, per_prefix=False)
    assert one[0] == low[-1] and one[1] == high[-1]


def test_undecided_when_the_budget_is_spent_or_the_rounds_run_out():
    x, tau = _at_threshold_scores(4, 16, 13)
    stream = x[0]
    d = sequential_decision((stream[j:j + 16] for j in range(0, 64, 16)), tau, "below", budget=32)
    assert (d.status, d.stop, d.n, d.rounds) == ("undecided", "budget", 32, 2)
    assert d.ci_low < tau < d.ci_high and "budget of 32" in d.reason
    d = sequential_decision((stream[j:j + 16] for j in range(0, 64, 16)), tau, "below")
    assert (d.status, d.stop, d.n) == ("undecided", "exhausted", 64)


def test_a_drifting_stream_whose_intersection_empties_keeps_a_nested_non_empty_sequence():
    # 300 scores at -0.9 then 3000 at 0.9 (across chunk boundaries): no single mean fits, the running
    # intersection empties, and the CS freezes at one point inside its last non-empty interval
    x = torch.cat([torch.full((300,), -0.9), torch.full((3000,), 0.9)]).double()
    for cs_low, cs_high in (betting_cs(x), _online(x, 7)):
        assert bool((cs_low <= cs_high).all())
        assert bool((cs_low.diff() >= 0).all()) and bool((cs_high.diff() <= 0).all())
        assert cs_low[-1] == cs_high[-1]
    assert torch.allclose(betting_cs(x)[0], _online(x, 7)[0])


def _online(x: torch.Tensor, k: int):
    cs = BettingCS()
    parts = [cs.update(x[j:j + k]) for j in range(0, x.shape[-1], k)]
    return torch.cat([p[0] for p in parts], -1), torch.cat([p[1] for p in parts], -1)


def test_online_updates_batches_and_one_shot_agree():
    x = 2 * _beta(3, 4, (3, 100), 17) - 1
    low, high = betting_cs(x)
    cs = BettingCS(batch_shape=(3,))
    parts = [cs.update(x[:, j:j + k]) for j, k in ((0, 1), (1, 15), (16, 84))]
    assert torch.allclose(torch.cat([p[0] for p in parts], -1), low)
    assert torch.allclose(torch.cat([p[1] for p in parts], -1), high)
    single_low, single_high = betting_cs(x[1])
    assert torch.allclose(single_low, low[1]) and torch.allclose(single_high, high[1])


# ---------------------------------------------------------------- a cascade's all-steps verdict

def test_cascade_fails_at_the_first_step_that_decides_and_passes_only_when_every_step_does():
    g = _gen(21)
    base = torch.rand(3, 512, generator=g, dtype=torch.float64) * 0.4 - 0.2          # mean 0.0 at each step
    ok = sequential_decision_steps((base[:, j:j + 16] for j in range(0, 512, 16)), 0.3, "below")
    assert (ok.status, ok.stop) == ("pass", "decided") and ok.rounds <= 8 and ok.n == 16 * ok.rounds
    bad = base.clone()
    bad[1] += 0.6                                                                     # step 1 stays similar
    d = sequential_decision_steps((bad[:, j:j + 16] for j in range(0, 512, 16)), 0.3, "below")
    assert (d.status, d.stop, d.step) == ("fail", "decided", 1) and d.ci_low >= 0.3 and "step 1" in d.reason
    # one step at the threshold keeps the verdict open until the budget is spent, and says so
    edge = base.clone()
    edge[2] += 0.3
    u = sequential_decision_steps((edge[:, j:j + 16] for j in range(0, 512, 16)), 0.3, "below", budget=64)
    assert (u.status, u.stop, u.n, u.step) == ("undecided", "budget", 64, 2) and u.ci_low < 0.3 < u.ci_high


def test_cascade_family_wise_false_failure_at_the_threshold_stays_below_alpha():
    steps, round_size, rounds = 4, 16, 16
    shared = _beta(13, 7, (R, 1, rounds * round_size), 31)            # the image's effect, shared by the steps
    own = _beta(13, 7, (R, steps, rounds * round_size), 32)
    x = shared + own - 1                                              # mean exactly 0.3 at every step, correlated
    ends = torch.arange(round_size - 1, rounds * round_size, round_size)
    cs = BettingCS(alpha=ALPHA / steps, batch_shape=(R, steps), grid_size=201)
    low, high = (b[..., ends] for b in cs.update(x))
    fails = (low >= 0.3).any(dim=-1).any(dim=-1)
    assert fails.double().mean().item() <= ALPHA + SLACK
    for i in range(4):   # the public API decides exactly as the batched path
        d = sequential_decision_steps((x[i, :, j:j + round_size] for j in range(0, x.shape[-1], round_size)),
                                      0.3, "below", ALPHA, grid_size=201)
        assert (d.status == "fail") == bool(fails[i])


# ---------------------------------------------------------------- bad input

def test_scores_outside_the_bounds_or_nan_are_a_data_error_naming_the_value():
    with pytest.raises(DataError, match=r"1\.5.*outside \[-1\.0, 1\.0\]"):
        betting_cs([0.1, 1.5, 0.2])
    with pytest.raises(DataError, match="nan"):
        betting_cs(torch.tensor([0.1, float("nan")]))
    with pytest.raises(DataError, match=r"-0\.25"):
        sequential_decision([[0.5, -0.25]], 0.3, lower=0.0, upper=1.0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(alpha=0.0), "alpha"), (dict(alpha=1.5), "alpha"), (dict(lower=1.0, upper=1.0), "lower must be below"),
    (dict(c=1.0), "truncation"), (dict(grid_size=2), "grid_size"),
])
def test_bad_parameters_are_a_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        betting_cs([0.5], **kwargs)


def test_bad_gate_arguments_are_a_config_error():
    with pytest.raises(ConfigError, match="direction"):
        sequential_decision([[0.1]], 0.3, "sideways")
    with pytest.raises(ConfigError, match="strictly inside"):
        sequential_decision([[0.1]], 1.0)
    with pytest.raises(ConfigError, match="budget"):
        sequential_decision([[0.1]], 0.3, budget=0)
    with pytest.raises(DataError, match=r"\(S steps, k images\)"):
        sequential_decision_steps([[0.1, 0.2]], 0.3)
