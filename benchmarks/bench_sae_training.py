"""SAE training throughput (issue 15): tokens/s of :func:`sanitycheck.models.sae.train_sae` against the floor of
the bare matmuls of forward + backward for the same batches, measured in the same run (extra_info).

Floor per step of ``B`` tokens: relu — ``x @ W_enc``, ``z @ W_dec`` and the three backward products
(``z.T @ g``, ``g @ W_dec.T``, ``x.T @ g_pre``), each ``2 B d_in d_sae`` flops; topk — the two encoder products
(``x @ W_enc``, ``x.T @ g_pre``) only, because its decoder reads k rows per token (``embedding_bag``), which is
``d_sae / k`` times cheaper than a dense decoder. What the floor leaves out (Adam over ``2 d_in d_sae`` weights,
the ReLU/top-k, the decoder renormalization) is the overhead the ratio shows.

Sizes: ``(d_in, d_sae)`` = (512, 4096) and (384, 3072); BENCH_SAE_TOKENS tokens of training (default 65536, 64
steps of 1024) on Gaussian activations (the speed does not depend on their content).

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python -m pytest benchmarks/bench_sae_training.py --benchmark-enable -q
"""

from __future__ import annotations

import os
import time

import pytest
import torch

from sanitycheck.models.sae import SAEConfig, train_sae

TOKENS = int(os.environ.get("BENCH_SAE_TOKENS", "65536"))
BATCH = 1024
SIZES = {"512x4096": (512, 4096), "384x3072": (384, 3072)}


def _acts(d_in: int, n: int = 16384) -> torch.Tensor:
    return torch.randn(n, d_in, generator=torch.Generator().manual_seed(d_in))


def _floor_s_per_token(acts: torch.Tensor, d_sae: int, arch: str, steps: int = 8) -> float:
    d_in = acts.shape[1]
    g = torch.Generator().manual_seed(1)
    W_enc = torch.randn(d_in, d_sae, generator=g)
    W_dec = torch.randn(d_sae, d_in, generator=g)
    x = acts[:BATCH].contiguous()
    z = torch.relu(x @ W_enc)
    gr = torch.randn(BATCH, d_in, generator=g)

    def one():
        pre = x @ W_enc
        x.T @ pre  # stands for x.T @ g_pre: same shapes (d_in, B) @ (B, d_sae)
        if arch == "relu":
            zz = z @ W_dec
            z.T @ gr
            gr @ W_dec.T
            return zz
        return pre

    one()
    t = time.perf_counter()
    for _ in range(steps):
        one()
    return (time.perf_counter() - t) / (steps * BATCH)


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("arch", ["relu", "topk"])
def test_sae_training_throughput(benchmark, arch, size):
    d_in, d_sae = SIZES[size]
    acts = _acts(d_in)
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture=arch, k=32, train_tokens=TOKENS, batch_size=BATCH)
    floor = _floor_s_per_token(acts, d_sae, arch)
    sae, log = benchmark.pedantic(train_sae, args=(acts, cfg), kwargs={"progress": False}, rounds=1, iterations=1)
    floor_tps = 1.0 / floor
    benchmark.extra_info.update({"tokens_per_s": round(log["tokens_per_s"]), "floor_tokens_per_s": round(floor_tps),
                                 "ratio_to_floor": round(floor_tps / log["tokens_per_s"], 2),
                                 "threads": torch.get_num_threads(), "tokens": log["tokens"]})
    print(f"\n{arch} {size}: {log['tokens_per_s']:.0f} tokens/s, floor {floor_tps:.0f} tokens/s, "
          f"{floor_tps / log['tokens_per_s']:.2f}x the floor's time")
    assert log["steps"] == -(-TOKENS // BATCH) and log["tokens_per_s"] > 0
