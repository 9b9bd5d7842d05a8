"""The same audit through Quantus 0.6 and through sanitycheck, side by side, with the floor of each cell.

Workload: ``fmnist_cnn`` (shipped reference weights), the first 128 Fashion-MNIST test images, 6 explainers
(gradient, gradient x input, integrated gradients with 10 steps, guided Grad-CAM, Grad-CAM, Sobel) x 4 checks:

==========================  ================================================================================
sanitycheck                 Quantus 0.6
==========================  ================================================================================
cascading_randomization     ``MPRT(layer_order="top_down")``, Spearman of absolute maps
random_logit                ``RandomLogit(num_classes=10)``, Spearman of absolute maps
deletion (28 steps, zero)   ``PixelFlipping(features_in_step=28, perturb_baseline="black")``
faithfulness_correlation    ``FaithfulnessCorrelation(nr_runs=20, subset_size=64, perturb_baseline="black")``
(20 subsets of 64 pixels)
==========================  ================================================================================

Equal work: Quantus' ``explain_func`` calls the *same* sanitycheck explainer object on the model Quantus hands
it, so both tools compute the same maps; only the harness around them differs. Quantus 0.6 hard-codes
integrated gradients to 10 Riemann-trapezoid steps whatever ``n_steps`` it is given (its own ``explain``); we
run our IG with 10 steps here so the work is equal, and say so in the table. Our IG takes the steps it is given.

Per cell three times, measured in the same process:

- **sanitycheck**: an engine ``AuditRun`` with that one check and that one explainer, into a fresh ``--out``
  (no cache hits), figures and progress off, model and data handed in (loaded once, outside the timing).
- **Quantus**: the metric's ``__call__`` on the same 128 images (``a_batch=None``: it explains them itself).
  A cell Quantus cannot compute (it raises) is recorded with the error message instead of a time.
- **floor**: the batched forward/backward passes the cell needs and nothing else: per explainer map of 128
  images ``passes`` forward+backward passes (gradient, gradient x input, Grad-CAM: 1; guided Grad-CAM: 2 —
  guided backprop and the CAM factor; integrated gradients: one pass over 10 x 128 inputs; Sobel: 0), once
  per model state (cascading: trained + every randomized state; random logit: trained + the other logit),
  plus the forward-only passes of the evaluation checks (deletion: 128 x (28 + 1) inputs; faithfulness
  correlation: 128 x (20 + 1) inputs) and the forward pass that picks the predicted class.

Run as a benchmark: ``python -m pytest benchmarks/bench_quantus.py --benchmark-enable`` (``extra_info`` carries
the floor, the Quantus time and the ratios), or as a script printing the Markdown table of the README:
``python benchmarks/bench_quantus.py --table [--rounds 1]``. Needs the optional extra
``pip install 'sanitycheck[bench]'`` (Quantus 0.6.0 pinned); without Quantus the pytest mode skips.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

N_IMAGES = 128
IG_STEPS = 10  # Quantus 0.6 hard-codes 10 steps for IG; equal work
DELETION_STEPS = 28  # 28 pixels per step on 28x28 images (the petsiuk2018 suite)
FC_SUBSETS, FC_SUBSET_SIZE = 20, 64

EXPLAINERS: Dict[str, Dict[str, Any]] = {
    "gradient": {},
    "gradient_x_input": {},
    "integrated_gradients": {"n_steps": IG_STEPS},
    "guided_gradcam": {},
    "gradcam": {},
    "sobel": {},
}
#: passes the whole audit does not repeat when both explainers run (sanitycheck.engine.sharing): gradient x
#: input takes gradient's input gradient (no pass of its own), guided Grad-CAM takes Grad-CAM's CAM (only its
#: guided backprop pass is left). The per-cell floors (one explainer per cell) are unaffected.
SHARED_PASSES = {"gradient_x_input": ("gradient", 0), "guided_gradcam": ("gradcam", 1)}

#: forward+backward passes of the model per map, in units of one batch of images (IG: its steps)
PASSES = {"gradient": 1, "gradient_x_input": 1, "integrated_gradients": IG_STEPS, "guided_gradcam": 2,
          "gradcam": 1, "sobel": 0}

CHECKS: Dict[str, Dict[str, Any]] = {
    "cascading_randomization": {"name": "cascading_randomization",
                                "verdict": {"metric": "spearman_abs", "threshold": 0.5, "rule": "all_steps"}},
    "random_logit": {"name": "random_logit",
                     "verdict": {"metric": "spearman_abs", "threshold": 0.5, "rule": "final_step"}},
    "deletion": {"name": "deletion", "params": {"n_steps": DELETION_STEPS, "substrate": "zero"}},
    "faithfulness_correlation": {"name": "faithfulness_correlation",
                                 "params": {"n_perturbations": FC_SUBSETS, "subset_size": FC_SUBSET_SIZE,
                                            "baseline": 0.0}},
}


# ----------------------------------------------------------------------------------------------- workload
WORKLOADS = ("fmnist", "resnet18")
RESNET_N, RESNET_SIZE, RESNET_DELETION_STEPS = 32, 64, 32  # 32 steps of 128 pixels on 64x64 images


class Workload:
    """The model, the images and their predicted classes, loaded once.

    ``fmnist``: ``fmnist_cnn`` (shipped weights) and the first ``n`` (128) Fashion-MNIST test images.
    ``resnet18``: torchvision ResNet-18, random init (seeded: ``torch.random.fork_rng`` around
    ``manual_seed(0)``, the global RNG is left as it was), 10 classes, and 32 uniform-random 3x64x64 images
    drawn from a ``sanitycheck.seeding`` generator; deletion runs 32 steps of 128 pixels (Quantus'
    ``features_in_step`` must divide the 4096 pixels)."""

    def __init__(self, n: Optional[int] = None, kind: str = "fmnist"):
        torch.set_num_threads(max(1, torch.get_num_threads()))
        if kind not in WORKLOADS:
            raise ValueError(f"unknown workload {kind!r}; choose one of {', '.join(WORKLOADS)}")
        self.kind = kind
        if kind == "fmnist":
            from sanitycheck.data import load_dataset
            from sanitycheck.models import load_model

            self.model = load_model("fmnist_cnn").eval()
            self.dataset = load_dataset("fashion_mnist", split="test")
            self.n = n or N_IMAGES
            self.deletion_steps = DELETION_STEPS
        else:
            self.n = n or RESNET_N
            self.model, self.dataset = resnet18_workload(self.n)
            self.deletion_steps = RESNET_DELETION_STEPS
        self.x = self.dataset.images[:self.n].contiguous()
        with torch.no_grad():
            self.y = self.model(self.x).argmax(1)
        from sanitycheck.checks.randomization import parameter_layers

        self.n_layers = len(parameter_layers(self.model, self.x[:1]))
        self.pixels_per_step = self.x.shape[-2] * self.x.shape[-1] // self.deletion_steps


def resnet18_workload(n: int = RESNET_N, size: int = RESNET_SIZE):
    """(torchvision ResNet-18 with 10 classes, random init seeded; ``n`` seeded random images size x size)."""
    import hashlib

    from sanitycheck._compat import import_torchvision
    from sanitycheck.data import ImageDataset
    from sanitycheck.seeding import generator

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = import_torchvision().models.resnet18(weights=None, num_classes=10).eval()
    g = generator("bench_quantus", "resnet18", "images")
    images = torch.rand(n, 3, size, size, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    ds = ImageDataset(name="random_64", images=images, labels=labels, classes=[str(i) for i in range(10)],
                      source="generated: sanitycheck.seeding.generator('bench_quantus', 'resnet18', 'images')",
                      checksum=hashlib.sha256(images.numpy().tobytes()).hexdigest())
    return model, ds


def _suite(checks: List[str], explainers: List[str], w: Optional["Workload"] = None):
    from sanitycheck.suites import parse_suite

    n = w.n if w is not None else N_IMAGES
    steps = w.deletion_steps if w is not None else DELETION_STEPS
    specs = [dict(CHECKS[c], params={**CHECKS[c]["params"], "n_steps": steps}) if c == "deletion" else CHECKS[c]
             for c in checks]
    return parse_suite({
        "name": "bench_quantus", "version": "0.0.1", "description": "side-by-side benchmark",
        "dataset": {"name": "fashion_mnist", "split": "test", "n": n}, "model": {"name": "fmnist_cnn"},
        "explainers": [{e: EXPLAINERS[e]} if EXPLAINERS[e] else e for e in explainers],
        "metrics": ["spearman_abs"], "batch_size": 128, "checks": specs,
    })


def run_sanitycheck(w: Workload, check: str, explainer: str, out: Path) -> Dict[str, Any]:
    """One cell: an engine run with one check and one explainer."""
    return run_sanitycheck_audit(w, [check], [explainer], out)


def run_sanitycheck_audit(w: Workload, checks: List[str], explainers: List[str], out: Path) -> Dict[str, Any]:
    """The audit as a user runs it: one engine run of every check and explainer (trained maps shared)."""
    from sanitycheck.engine import AuditRun

    return AuditRun(_suite(checks, explainers, w), out_dir=out, model=w.model, dataset=w.dataset, n=w.n,
                    indices=list(range(w.n)), progress=False, figures=False).execute()


# ------------------------------------------------------------------------------------------------ Quantus
def _explain_func(explainer: str) -> Callable:
    """Quantus' ``explain_func``: the same sanitycheck explainer, maps as (N, 1, H, W) NumPy arrays."""
    from sanitycheck.explainers import get_explainer

    exp = get_explainer(explainer, **EXPLAINERS[explainer])

    def explain(model, inputs, targets, **_: Any):
        x = torch.as_tensor(inputs, dtype=torch.float32)
        t = torch.as_tensor(targets, dtype=torch.long)
        model.eval()
        maps = exp(model, x, t)
        return maps.detach().reshape(x.shape[0], 1, *x.shape[-2:]).numpy()

    return explain


def quantus_metric(check: str, w: Optional[Workload] = None):
    import quantus

    common = dict(disable_warnings=True, display_progressbar=False)
    if check == "cascading_randomization":
        return quantus.MPRT(layer_order="top_down", similarity_func=quantus.similarity_func.correlation_spearman,
                            abs=True, normalise=False, **common)
    if check == "random_logit":
        return quantus.RandomLogit(num_classes=10, similarity_func=quantus.similarity_func.correlation_spearman,
                                   abs=True, normalise=False, **common)
    if check == "deletion":
        return quantus.PixelFlipping(features_in_step=w.pixels_per_step if w is not None else 28,
                                     perturb_baseline="black",
                                     abs=False, normalise=False, **common)
    if check == "faithfulness_correlation":
        return quantus.FaithfulnessCorrelation(nr_runs=FC_SUBSETS, subset_size=FC_SUBSET_SIZE,
                                               perturb_baseline="black", abs=False, normalise=False,
                                               return_aggregate=False, **common)
    raise KeyError(check)


def run_quantus(w: Workload, check: str, explainer: str) -> Any:
    metric = quantus_metric(check, w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return metric(model=w.model, x_batch=w.x.numpy(), y_batch=w.y.numpy(), a_batch=None,
                      explain_func=_explain_func(explainer), device="cpu", batch_size=w.n)


# -------------------------------------------------------------------------------------------------- floor
def _fwd_bwd(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> None:
    """One forward + backward pass to the input (the work of one gradient map)."""
    x = x.detach().requires_grad_(True)
    out = model(x)
    torch.autograd.grad(out.gather(1, target[:, None]).sum(), x)


def _fwd(model: nn.Module, x: torch.Tensor, batch: int = 128) -> None:
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            model(x[i:i + batch])


def n_states(check: str, w: Workload) -> int:
    """Model states whose maps the check needs (trained included)."""
    if check == "cascading_randomization":
        return 1 + w.n_layers
    if check == "random_logit":
        return 2
    return 1


def floor_seconds(w: Workload, check: str, explainer: str) -> float:
    """The batched forward/backward passes the cell needs, timed on the trained model (a randomized state has
    the same cost per pass)."""
    model, x, y = w.model, w.x, w.y
    t0 = time.perf_counter()
    _fwd(model, x)  # the predicted class
    for _ in range(n_states(check, w)):
        passes = PASSES[explainer]
        if explainer == "integrated_gradients":
            _fwd_bwd(model, x.repeat(passes, 1, 1, 1), y.repeat(passes))
        else:
            for _ in range(passes):
                _fwd_bwd(model, x, y)
    if check == "deletion":
        _fwd(model, x.repeat(w.deletion_steps + 1, 1, 1, 1))
    elif check == "faithfulness_correlation":
        _fwd(model, x.repeat(FC_SUBSETS + 1, 1, 1, 1))
    return time.perf_counter() - t0


def floor_audit_seconds(w: Workload, checks: List[str], explainers: List[str]) -> float:
    """The floor of the whole audit in one run: the trained model's maps once per explainer, then the extra
    states of the state checks and the forward passes of the evaluation checks."""
    model, x, y = w.model, w.x, w.y
    t0 = time.perf_counter()
    _fwd(model, x)
    states = 1 + sum(n_states(c, w) - 1 for c in checks)
    for explainer in explainers:
        passes = PASSES[explainer]
        partner, remaining = SHARED_PASSES.get(explainer, (None, passes))
        if partner in explainers:  # the engine shares this pass with the partner's (engine/sharing.py)
            passes = remaining
        for _ in range(states):
            if explainer == "integrated_gradients":
                _fwd_bwd(model, x.repeat(passes, 1, 1, 1), y.repeat(passes))
            else:
                for _ in range(passes):
                    _fwd_bwd(model, x, y)
        if "deletion" in checks:
            _fwd(model, x.repeat(w.deletion_steps + 1, 1, 1, 1))
        if "faithfulness_correlation" in checks:
            _fwd(model, x.repeat(FC_SUBSETS + 1, 1, 1, 1))
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------- a cell
def measure_cell(w: Workload, check: str, explainer: str, rounds: int = 1,
                 out_root: Optional[Path] = None) -> Dict[str, Any]:
    """sanitycheck, floor and Quantus seconds of one cell (the minimum over ``rounds``)."""
    out_root = Path(out_root or tempfile.mkdtemp(prefix="bench_quantus_"))
    sc, fl, qt, error, results = [], [], [], None, None
    for r in range(rounds):
        fl.append(floor_seconds(w, check, explainer))
        t0 = time.perf_counter()
        results = run_sanitycheck(w, check, explainer, out_root / f"{check}-{explainer}-{r}")
        sc.append(time.perf_counter() - t0)
        if error is None:
            t0 = time.perf_counter()
            try:
                run_quantus(w, check, explainer)
                qt.append(time.perf_counter() - t0)
            except Exception as e:  # a cell Quantus cannot compute: recorded, not fatal
                error = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}"
    cell = {"check": check, "explainer": explainer, "sanitycheck_s": min(sc), "floor_s": min(fl),
            "quantus_s": min(qt) if qt else None, "quantus_error": error}
    cell["sanitycheck_over_floor"] = cell["sanitycheck_s"] / cell["floor_s"] if cell["floor_s"] > 0 else None
    cell["quantus_over_sanitycheck"] = cell["quantus_s"] / cell["sanitycheck_s"] if qt else None
    cell["records"] = len(results["records"]) if results else 0
    return cell


def markdown_table(cells: List[Dict[str, Any]]) -> str:
    def f(v, fmt="{:.2f}"):
        return "—" if v is None else fmt.format(v)

    lines = ["| check | explainer | sanitycheck s | floor s | Quantus s | sanitycheck / floor | Quantus / sanitycheck |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for c in cells:
        q = f(c["quantus_s"]) if c["quantus_error"] is None else "cannot: " + c["quantus_error"].replace("|", "/")
        lines.append(f"| {c['check']} | {c['explainer']} | {f(c['sanitycheck_s'])} | {f(c['floor_s'], '{:.3f}')} "
                     f"| {q} | {f(c['sanitycheck_over_floor'], '{:.2f}x')} | {f(c['quantus_over_sanitycheck'], '{:.2f}x')} |")
    sc = sum(c["sanitycheck_s"] for c in cells)
    fl = sum(c["floor_s"] for c in cells)
    both = [c for c in cells if c["quantus_s"] is not None]
    qs, scb = sum(c["quantus_s"] for c in both), sum(c["sanitycheck_s"] for c in both)
    lines.append(f"| **all** | | {sc:.2f} | {fl:.3f} | {qs:.2f} ({len(both)} cells) | {sc / fl:.2f}x "
                 f"| {qs / scb if scb else float('nan'):.2f}x (same {len(both)} cells) |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- pytest
try:
    import pytest
except ImportError:  # script mode without pytest
    pytest = None

if pytest is not None and "pytest" in sys.modules and __name__ != "__main__":
    @pytest.fixture(scope="module", params=WORKLOADS)
    def workload(request):
        pytest.importorskip("quantus", reason="Quantus 0.6 is an optional benchmark dependency: "
                                              "pip install 'sanitycheck[bench]'")
        return Workload(kind=request.param)

    @pytest.mark.parametrize("explainer", list(EXPLAINERS))
    @pytest.mark.parametrize("check", list(CHECKS))
    def test_side_by_side_with_quantus(benchmark, workload, tmp_path, check, explainer):
        floor = floor_seconds(workload, check, explainer)
        rounds = iter(range(10 ** 6))
        spent: List[float] = []

        def run():
            t0 = time.perf_counter()
            try:
                return run_sanitycheck(workload, check, explainer, tmp_path / f"r{next(rounds)}")
            finally:
                spent.append(time.perf_counter() - t0)

        results = benchmark.pedantic(run, rounds=1, iterations=1)
        sc = min(spent)
        try:
            t0 = time.perf_counter()
            run_quantus(workload, check, explainer)
            qt, error = time.perf_counter() - t0, None
        except Exception as e:  # recorded: a cell Quantus cannot compute
            qt, error = None, f"{type(e).__name__}: {e}"[:300]
        benchmark.extra_info.update(
            floor_seconds=round(floor, 4), sanitycheck_seconds=round(sc, 4),
            quantus_seconds=None if qt is None else round(qt, 4), quantus_error=error,
            ratio_to_floor=round(sc / floor, 2) if floor > 0 else None,
            quantus_over_sanitycheck=None if qt is None else round(qt / sc, 2),
            note="Quantus 0.6 hard-codes IG to 10 steps; ours runs the 10 it is given here" if
            explainer == "integrated_gradients" else "")
        assert results["records"], "sanitycheck produced no records"
        assert floor >= 0


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", action="store_true", help="print the Markdown table (per check x explainer)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds per cell; the minimum is reported")
    ap.add_argument("--checks", nargs="*", default=list(CHECKS))
    ap.add_argument("--explainers", nargs="*", default=list(EXPLAINERS))
    ap.add_argument("--workload", choices=WORKLOADS, default="fmnist",
                    help="fmnist: fmnist_cnn, 128 Fashion-MNIST images; resnet18: torchvision ResNet-18 (random "
                         "init, seeded, 10 classes), 32 seeded random 64x64 images")
    args = ap.parse_args(argv)
    try:
        import quantus  # noqa: F401
    except ImportError:
        print("Quantus is not installed: pip install 'sanitycheck[bench]'", file=sys.stderr)
        return 2
    w = Workload(kind=args.workload)
    run_sanitycheck(w, args.checks[0], args.explainers[0], Path(tempfile.mkdtemp()) / "warmup")  # imports, caches
    cells = []
    for check in args.checks:
        for explainer in args.explainers:
            cell = measure_cell(w, check, explainer, rounds=args.rounds)
            cells.append(cell)
            print(f"{check:26s} {explainer:22s} sc {cell['sanitycheck_s']:.2f}s floor {cell['floor_s']:.3f}s "
                  f"quantus {cell['quantus_s'] if cell['quantus_s'] is not None else cell['quantus_error']}",
                  file=sys.stderr, flush=True)
    floors, runs = [], []
    for r in range(args.rounds):  # the minimum over the rounds, as for the cells
        floors.append(floor_audit_seconds(w, args.checks, args.explainers))
        t0 = time.perf_counter()
        run_sanitycheck_audit(w, args.checks, args.explainers, Path(tempfile.mkdtemp()) / f"audit-{r}")
        runs.append(time.perf_counter() - t0)
    audit_floor, audit_s = min(floors), min(runs)
    if args.table:
        print(f"workload {w.kind}; torch threads: {torch.get_num_threads()}; {w.n} images "
              f"{'x'.join(map(str, w.x.shape[1:]))}; {w.n_layers} layers randomized by the cascade; deletion "
              f"{w.deletion_steps} steps of {w.pixels_per_step} pixels; IG {IG_STEPS} steps (Quantus 0.6 "
              f"hard-codes 10)\n")
        print(markdown_table(cells))
        both = [c for c in cells if c["quantus_s"] is not None]
        qs = sum(c["quantus_s"] for c in both)
        print(f"\nWhole audit in ONE sanitycheck run ({len(args.checks)} checks x {len(args.explainers)} "
              f"explainers, trained maps shared): {audit_s:.2f} s; its floor {audit_floor:.3f} s "
              f"({audit_s / audit_floor:.2f}x); Quantus, sum of its {len(both)} cells: {qs:.2f} s "
              f"(Quantus / sanitycheck {qs / audit_s:.2f}x).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
