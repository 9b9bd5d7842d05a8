"""Peak memory of a suite at large N (issue 12, deliverable 5: "the default suite at N = 10,000 Fashion-MNIST
images runs within 4 GiB RSS").

The full default suite (10 explainers) at N = 10,000 takes over an hour on a 2-core machine, so the benchmark
takes N and an explainer subset, runs the audit in THIS process (fresh, so ``ru_maxrss`` is the run's), and
prints ``results.json``'s ``resources.peak_rss_mb``, the time, and a projection for the full explainer set from
the measured memory per image and explainer:

    projected_peak = base + N x (bytes per image held per explainer) x explainers

where ``base`` is the peak of the same audit at a small N (torch, the model, the dataset, the twin model: what
does not grow with N) and the per-image, per-explainer bytes are (peak(N) - base) / ((N - small N) x explainers
measured); each N runs in its own process so that ``ru_maxrss`` is that run's. That is an upper bound for cheap explainers'
share and a floor for expanding ones (IG, SmoothGrad), whose transient peak is bounded by their internal chunks
(``internal_batch_size`` 2048 / ``max_batch`` 4096 rows), not by N.

    python benchmarks/bench_memory.py --n 10000 --explainers gradient,sobel [--shard-size 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GIB = 1024.0  # MiB


def measure(suite_name: str, n: int, explainers, checks, shard_size) -> dict:
    """One audit in this process: its results' resources block and the time."""
    from sanitycheck.devices import rss_mb
    from sanitycheck.engine import AuditRun
    from sanitycheck.suites import load_suite

    base = rss_mb()
    with tempfile.TemporaryDirectory(prefix="bench_memory-") as tmp:
        t0 = time.perf_counter()
        res = AuditRun(load_suite(suite_name), out_dir=Path(tmp) / "out", n=n, explainers=explainers,
                       progress=False, figures=False, shard_size=shard_size, checks=checks).execute()
        seconds = time.perf_counter() - t0
    return {"n": n, "seconds": round(seconds, 1), "rss_before_run_mb": round(base, 1),
            "peak_rss_mb": res["resources"]["peak_rss_mb"], "resources": res["resources"],
            "checks": list(res["checks"])}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", default="adebayo2018")
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--baseline-n", type=int, default=64,
                    help="a small N measured in its own process: the fixed memory (torch, data, models)")
    ap.add_argument("--explainers", default="gradient,sobel", help="comma-separated subset of the suite's")
    ap.add_argument("--checks", default=None, help="comma-separated subset of the suite's checks (default: all)")
    ap.add_argument("--shard-size", type=int, default=None)
    ap.add_argument("--full-explainers", type=int, default=10, help="explainers of the full suite (projection)")
    ap.add_argument("--json", default=None, help="write the measurement here")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # internal: one measurement
    args = ap.parse_args(argv)
    explainers = [e for e in args.explainers.split(",") if e]
    checks = args.checks.split(",") if args.checks else None
    if args.one:
        out = measure(args.suite, args.n, explainers, checks, args.shard_size)
        print("MEASURED " + json.dumps(out))
        return out

    def fresh(n: int) -> dict:  # a fresh process each: ru_maxrss is that run's peak
        cmd = [sys.executable, __file__, "--one", "--suite", args.suite, "--n", str(n),
               "--explainers", args.explainers]
        cmd += ["--checks", args.checks] if args.checks else []
        cmd += ["--shard-size", str(args.shard_size)] if args.shard_size else []
        text = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        return json.loads(next(l for l in text.splitlines() if l.startswith("MEASURED "))[9:])

    small, big = fresh(args.baseline_n), fresh(args.n)
    slope = max(0.0, big["peak_rss_mb"] - small["peak_rss_mb"]) / (max(1, args.n - args.baseline_n) * len(explainers))
    projected = small["peak_rss_mb"] + slope * args.n * args.full_explainers
    out = {"suite": args.suite, "explainers": explainers, "checks": big["checks"], "shard_size": args.shard_size,
           "baseline": small, "run": big, "peak_rss_mb": big["peak_rss_mb"], "seconds": big["seconds"],
           "mib_per_image_per_explainer": round(slope, 6),
           "projection": f"{small['peak_rss_mb']:.0f} MiB fixed (N={args.baseline_n}) + {slope * 1024:.2f} KiB "
                         f"x {args.n} images x {args.full_explainers} explainers",
           "projected_peak_rss_mb_full_explainers": round(projected, 1),
           "within_4_gib": big["peak_rss_mb"] <= 4 * GIB, "projected_within_4_gib": projected <= 4 * GIB,
           "threads": os.environ.get("OMP_NUM_THREADS")}
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
