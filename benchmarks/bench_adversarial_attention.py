"""Throughput of Jain & Wallace's adversarial attention search, CPU, float64.

64 instances of length ~30 (24..36), k = 5 candidates, 500 Adam steps, an (untrained, seeded)
BiLSTM of embed 128 / hidden 64 with additive attention; instances per second in ``extra_info``.

Run: ``python -m pytest benchmarks/bench_adversarial_attention.py --benchmark-enable -q``
(without ``--benchmark-enable`` it runs once, as a smoke test).

Runs on one intra-op thread: these (B·K, L, H) operations are small, and on a shared 2-core machine
two threads were ~60x slower per step (4.4 ms vs 275 ms) than one under contention.
"""

from __future__ import annotations

import pytest
import torch

from sanitycheck.checks.adversarial_attention import adversarial_attention, permutation_test
from sanitycheck.models.attention import AttentionClassifier

B, L = 64, 36


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _setup():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AttentionClassifier(vocab_size=1000, n_classes=2, encoder="bilstm", attention="additive",
                                    embed_dim=128, hidden=64).double().eval()
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(24, L + 1, (B,), generator=g)
    ids = torch.randint(1, 1000, (B, L), generator=g)
    ids[torch.arange(L)[None, :] >= lengths[:, None]] = 0
    return model, ids, lengths


def test_adversarial_attention_throughput(benchmark):
    model, ids, lengths = _setup()
    res = benchmark.pedantic(adversarial_attention, args=(model, ids, lengths),
                             kwargs=dict(k=5, steps=500, seed=0), rounds=1, iterations=1)
    seconds = benchmark.stats.stats.mean if benchmark.stats is not None else float("nan")
    benchmark.extra_info.update(instances=B, k=5, steps=500, seconds=seconds, instances_per_s=B / seconds, threads=torch.get_num_threads(),
                                share_found=res.share_found)
    assert res.candidates.shape == (B, 5, L)


def test_permutation_throughput(benchmark):
    model, ids, lengths = _setup()
    res = benchmark.pedantic(permutation_test, args=(model, ids, lengths), kwargs=dict(n_permutations=100),
                             rounds=3, iterations=1)
    seconds = benchmark.stats.stats.mean if benchmark.stats is not None else float("nan")
    benchmark.extra_info.update(instances=B, n_permutations=100, instances_per_s=B / seconds)
    assert res.median_output_change.shape == (B,)
