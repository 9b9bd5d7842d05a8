"""Scaling on paper (issue 12, deliverable 6): the cost of the full ImageNet-validation audit of ResNet-50
(50,000 images x every image explainer x every check of adebayo2018, petsiuk2018 and faithfulness).

MEASURED here (``--measure``): torchvision ResNet-50 (random init) forward+backward and forward-only time per
224x224 image on this CPU (small batch, a few reps, after a warm-up), its parameterized layers (the cascade's
states: one per conv/batch-norm/linear, the rule that gives ResNet-18 its 41), and the forward activations of
one input (sanitycheck.engine.batching's probe) for memory per worker.
COUNTED from the suites' parameters (below, ``EXPLAINER_PASSES`` and ``check_passes``): the passes per image.
ESTIMATED (not measurable here, no GPU): ``H100_IMG_PER_S``, ResNet-50 fwd+bwd images/s on one H100 in float32/
TF32 — taken from public training throughput (NVIDIA's ResNet-50 v1.5 training results, about 2,500-3,000
images/s per H100 with mixed precision; Lambda's H100 analysis: vision ~2x an A100), rounded down to 2,000
because an audit needs float32 input gradients and runs small per-state batches; ``RAY_EFFICIENCY`` (0.9 for 8
workers: units are independent, models/data reach each worker once).

    python benchmarks/scaling_estimate.py [--measure] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time

N_IMAGES = 50_000
H100_IMG_PER_S = 2000.0  # ESTIMATE: ResNet-50 fwd+bwd, one H100 (see the docstring)
RAY_WORKERS = 8
RAY_EFFICIENCY = 0.9  # ESTIMATE
FWD_FRACTION = 1 / 3  # a forward pass is about a third of forward+backward (backward ~2x forward)

# fwd+bwd passes per image for one map (suite parameters: smoothgrad/vargrad 50 samples, IG 50 steps;
# guided Grad-CAM = guided backprop + Grad-CAM; sobel and noise need no model)
EXPLAINER_PASSES = {"gradient": 1, "gradient_x_input": 1, "smoothgrad": 50, "vargrad": 50,
                    "integrated_gradients": 50, "guided_backprop": 1, "gradcam": 1, "guided_gradcam": 2,
                    "sobel": 0, "noise": 0}


def check_passes(states: int) -> dict:
    """{suite/check: (fwd+bwd passes per image for all explainers, forward-only passes per image)}."""
    e = sum(EXPLAINER_PASSES.values())  # one map of every explainer
    k = len(EXPLAINER_PASSES)
    sg = 10 * sum(1 for v in EXPLAINER_PASSES.values() if v)  # smooth_mprt: 10 noisy copies of each model map
    smooth_e = 10 * e
    return {
        "original maps (all suites share them)": (e, 0),
        "adebayo2018/cascading_randomization": (states * e, 0),
        "adebayo2018/independent_randomization": (states * e, 0),
        "adebayo2018/data_randomization (maps only; the twin model's training is not counted)": (e, 0),
        "petsiuk2018/deletion (28 steps)": (0, 28 * k),
        "petsiuk2018/insertion (28 steps)": (0, 28 * k),
        "faithfulness/aopc_morf (28 steps)": (0, 28 * k),
        "faithfulness/aopc_lerf (28 steps)": (0, 28 * k),
        "faithfulness/faithfulness_correlation (100 perturbations)": (0, 100 * k),
        "faithfulness/infidelity (50 perturbations)": (0, 50 * k),
        "faithfulness/max_sensitivity (10 re-explanations)": (10 * e, 0),
        "faithfulness/road (9 MoRF + 9 LeRF)": (0, 18 * k),
        "faithfulness/random_logit (1 re-explanation)": (e, 0),
        "faithfulness/smooth_mprt (10 samples, original + every state)": ((states + 1) * smooth_e + 0 * sg, 0),
        "faithfulness/efficient_mprt (fully randomized)": (e, 0),
    }


def measure(batch: int = 4, reps: int = 3) -> dict:
    import torch

    from sanitycheck._compat import import_torchvision
    from sanitycheck.engine.batching import activation_bytes_per_input

    torchvision = import_torchvision()  # the shim for a torchvision built against another torch

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    x = torch.randn(batch, 3, 224, 224)
    states = sum(1 for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d,
                                                              torch.nn.Linear)))

    def fwd_bwd():
        xi = x.clone().requires_grad_(True)
        model(xi)[:, 0].sum().backward()

    def fwd():
        with torch.no_grad():
            model(x)

    out = {}
    for name, fn in (("fwd_bwd", fwd_bwd), ("fwd", fwd)):
        fn()  # warm-up
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        out[f"cpu_{name}_s_per_image"] = (time.perf_counter() - t0) / (reps * batch)
    out.update({"states": states, "activation_bytes_per_input": activation_bytes_per_input(model, x),
                "params_bytes": sum(p.numel() * 4 for p in model.parameters()), "batch": batch, "reps": reps,
                "threads": torch.get_num_threads()})
    return out


# measured on the 2-core development machine, 1 torch thread, batch 4, 3 reps (python scaling_estimate.py --measure)
MEASURED_DEFAULT = {"cpu_fwd_bwd_s_per_image": 0.945, "cpu_fwd_s_per_image": 0.254, "states": 107,
                    "activation_bytes_per_input": 128_763_808, "params_bytes": 102_228_128}


def estimate(m: dict) -> dict:
    per_check = check_passes(m["states"])
    fb = sum(v[0] for v in per_check.values())
    fo = sum(v[1] for v in per_check.values())
    equiv = fb + FWD_FRACTION * fo  # fwd+bwd-equivalent passes per image
    total_passes = equiv * N_IMAGES
    h100_hours = total_passes / H100_IMG_PER_S / 3600
    doc = {
        "inputs": {"images": N_IMAGES, "states (measured: ResNet-50 conv+bn+linear)": m["states"],
                   "H100 fwd+bwd img/s (ESTIMATE)": H100_IMG_PER_S, "ray efficiency (ESTIMATE)": RAY_EFFICIENCY},
        "passes_per_image": {k: {"fwd_bwd": v[0], "fwd_only": v[1]} for k, v in per_check.items()},
        "fwd_bwd_equivalent_passes_per_image": round(equiv),
        "fwd_bwd_equivalent_passes_total": round(total_passes),
        "gpu_hours_1xH100": round(h100_hours, 1),
        "gpu_hours_1xH100_by_suite": {
            suite: round(sum((v[0] + FWD_FRACTION * v[1]) for k, v in per_check.items() if k.startswith(suite))
                         * N_IMAGES / H100_IMG_PER_S / 3600, 1)
            for suite in ("original maps", "adebayo2018", "petsiuk2018", "faithfulness")},
        "wall_hours_8xH100_ray": round(h100_hours / (RAY_WORKERS * RAY_EFFICIENCY), 1),
        "gpu_hours_8xH100_ray (billed)": round(h100_hours / RAY_EFFICIENCY, 1),
    }
    if m.get("cpu_fwd_bwd_s_per_image"):
        cpu_hours = total_passes * m["cpu_fwd_bwd_s_per_image"] / 3600
        doc["cpu_core_hours_at_measured_floor"] = round(cpu_hours)
        doc["implied_cpu_to_h100_factor"] = round(H100_IMG_PER_S * m["cpu_fwd_bwd_s_per_image"])
    if m.get("activation_bytes_per_input"):
        per_row = 3 * m["activation_bytes_per_input"]  # x3: forward activations + backward (batching's rule)
        rows = 2048  # the largest chunk an expanding explainer runs at once (IG internal_batch_size)
        doc["memory_per_worker"] = {
            "per_row_mib (activations x3)": round(per_row / 2 ** 20, 1),
            "gpu_gib_for_2048_rows (IG/SmoothGrad chunk)": round((rows * per_row + 2 * m["params_bytes"]) / 2 ** 30, 1),
            "gpu_gib_for_256_rows": round((256 * per_row + 2 * m["params_bytes"]) / 2 ** 30, 1),
            "host_gib_per_shard_of_1000_images (inputs + 10 maps float32)":
                round(1000 * 3 * 224 * 224 * 4 * (1 + 10 / 3) / 2 ** 30, 2),
        }
    return doc


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--measure", action="store_true", help="measure ResNet-50 on this CPU (about a minute)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    m = measure() if args.measure else dict(MEASURED_DEFAULT)
    doc = {"measured": m, **estimate(m)}
    text = json.dumps(doc, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text)
    return doc


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
