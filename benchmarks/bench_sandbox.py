"""Overhead of the OS sandbox of ``submit``: a worker under bubblewrap against the same worker as a plain
subprocess (the audit hook only), from start to the first maps and through close.

Both start a Python worker that imports torch, captum and sanitycheck, loads a file method, explains one
batch of 8 digits and exits; the difference is bubblewrap's namespaces and mounts. Runs are interleaved
(best of ``REPEATS``) so that load from other processes hits both alike. ``benchmark.extra_info`` gets
``bwrap_s``, ``plain_s`` and ``overhead_s`` (target: overhead <= 2 s per submission; a submission starts
one worker).

Run: ``python -m pytest benchmarks/bench_sandbox.py --benchmark-enable -q -s``
(without ``--benchmark-enable`` each case runs once, as a smoke test; the overhead is measured anyway).
"""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from sanitycheck import sandbox
from sanitycheck.submissions import RemoteExplainer

REPEATS = 3
METHOD = '''\
def gradient(model, x, target):
    import torch
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x).gather(1, target.view(-1, 1)).sum(), x)
    return g.sum(1)
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    if sandbox.bwrap_problem() is not None:
        pytest.skip(f"the OS sandbox cannot run here: {sandbox.bwrap_problem()}")
    root = tmp_path_factory.mktemp("bench_sandbox")
    (root / "m.py").write_text(METHOD)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, 10)).eval()
    x, y = torch.rand(8, 1, 16, 16), torch.arange(8)
    return root, model, x, y


def _one(root, model, x, y, bwrap: bool) -> float:
    saved = sandbox._PROBE.get("result")
    sandbox._PROBE["result"] = None if bwrap else "measuring the plain subprocess"
    try:
        start = time.perf_counter()
        with RemoteExplainer(f"{root / 'm.py'}:gradient", work_dir=root / "w", trust_code=True) as remote:
            assert remote.sandbox == ("bwrap" if bwrap else "audit-hook only")
            remote(model, x, y)
        return time.perf_counter() - start
    finally:
        sandbox._PROBE["result"] = saved


def test_sandbox_overhead(benchmark, setup):
    root, model, x, y = setup
    benchmark.group = "sandbox: worker start + one batch + close"
    times = {True: [], False: []}
    for _ in range(REPEATS):
        for mode in (True, False):
            times[mode].append(_one(root, model, x, y, mode))
    benchmark.pedantic(lambda: _one(root, model, x, y, True), rounds=1, iterations=1)
    info = {"bwrap_s": round(min(times[True]), 3), "plain_s": round(min(times[False]), 3)}
    info["overhead_s"] = round(info["bwrap_s"] - info["plain_s"], 3)
    benchmark.extra_info.update(info)
    print(f"\nsandbox overhead: {info}")
