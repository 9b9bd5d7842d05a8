"""``sanitycheck run | submit | publish | validate | ls | leaderboard | clip-saliency | explain | train``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from .errors import SanityCheckError
from .options import add_gate_options, add_run_options, gate_messages, run_kwargs, verdict_status

#: the status of a verdict as the terminal shows it
_STATUS_CELL = {"pass": "PASS", "fail": "FAIL", "inconclusive": "INCONCL", "undefined": "UNDEF",
                "insufficient_data": "LOW-N", "noise": "NOISE"}


def _score_cell(r: Optional[dict]) -> str:
    if r is None or r["mean"] is None:
        return "undefined"
    return f"{r['mean']:.3f} [{r['ci_low']:.2f},{r['ci_high']:.2f}]"


def _sampling_checks(results: dict) -> List[str]:
    """The run's noise_ceiling and sampling_convergence checks (issue 14), in suite order."""
    from .checks.base import get_check
    from .checks.sampling import NoiseCeiling, SamplingConvergence

    out = []
    for name, info in (results.get("checks") or {}).items():
        try:
            check = get_check(name, **(info.get("params") or {}))
        except SanityCheckError:
            continue
        if isinstance(check, (NoiseCeiling, SamplingConvergence)):
            out.append(name)
    return out


def _sampling_cell(results: dict, explainer: str, check: str, verdicts: List[dict]) -> str:
    """``0.61 [0.58,0.64]``: the check's record of the metric the explainer's verdicts read."""
    recs = [r for r in results["records"] if r["explainer"] == explainer and r["check"] == check
            and r["step"] != "original"]
    if not recs:
        return "-"
    metrics = [v["metric"] for v in verdicts]
    r = next((r for m in metrics for r in recs if r["metric"] == m), recs[0])
    if r["mean"] is None:
        return "undef"
    return f"{r['mean']:.2f} [{r['ci_low']:.2f},{r['ci_high']:.2f}]"


def _print_summary(results: dict, out_dir: Path) -> None:
    print(f"\n{results['suite']} v{results['suite_version']} on {results['model']['name']} / "
          f"{results['dataset']['name']} (n={results['dataset']['n']}, seed={results['seed']})")
    explainers = list(results["explainers"])
    width = max(len(e) for e in explainers) + 2
    verdicts = results["verdicts"]
    checks = list(dict.fromkeys(v["check"] for v in verdicts))
    sampling = _sampling_checks(results)
    if checks:
        table = {(v["explainer"], v["check"]): v for v in verdicts}
        print(" " * width + "".join(f"{c[:26]:>28}" for c in checks)
              + "".join(f"{c[:20]:>22}" for c in sampling))
        for e in explainers:
            cells = []
            for c in checks:
                v = table.get((e, c))
                m = "-" if v is None else ("undef" if v["measured"] is None else f"{v['measured']:.2f}")
                cells.append(f"{'-' if v is None else _STATUS_CELL[verdict_status(v)] + ' (' + m + ')':>28}")
            for c in sampling:  # the noise ceiling (and convergence) beside the randomization scores
                cells.append(f"{_sampling_cell(results, e, c, [table[k] for k in table if k[0] == e]):>22}")
            print(f"{e:<{width}}" + "".join(cells))
        print("(value: the CI bound that decided the verdict; INCONCL: the 95% CI straddles the threshold, "
              "UNDEF: the trained model's maps carry no ranking, LOW-N: fewer samples than the rule's min_n"
              + ("; NOISE: the noise ceiling's upper CI bound is below the threshold, the maps are dominated by "
                 "sampling noise; noise_ceiling: the verdicts' metric between two sampling seeds of the trained "
                 "model, mean [95% CI] (1: a deterministic explainer)" if sampling else "")
              + "; only PASS passes; see results.json for the reasons)")
    from .modalities import modality_for

    if modality_for(results.get("input_kind", "image")).scores_per_record:  # steps differ per check
        rows = [r for r in results["records"] if results["checks"][r["check"]].get("kind") == "evaluation"]
        if rows:
            print("\nscores (mean [95% CI], n):")
            for r in rows:
                print(f"  {r['check']:<22} {r['step']:<16} {r['metric']:<22} {r['explainer']:<20} "
                      f"{_score_cell(r)} n={r['n']}")
        for check, summaries in (results.get("summaries") or {}).items():
            for sm in summaries:
                value = sm.get("value")
                value = "undefined" if value is None else (
                    f"{value:.3f} [{sm['ci_low']:.2f},{sm['ci_high']:.2f}]" if sm.get("ci_low") is not None
                    and sm.get("ci_high") is not None else f"{value:.3f}")
                n = sm.get("n", sm.get("n_a"))
                who = str(sm.get("explainer") or sm.get("method") or "")
                what = sm["statistic"] + (f" ({sm['method']})" if sm.get("method") and sm.get("explainer") else "")
                print(f"  {check:<22} {sm.get('step', ''):<16} {what:<22} {who:<20} {value}"
                      + (f" n={n}" if n is not None else ""))
        for check, reason in (results.get("not_applicable") or {}).items():
            print(f"not applicable: {check}: {reason}")
        print(f"\nresults: {out_dir / 'results.json'}")
        return
    scores = [(c, r["metric"]) for c, info in results["checks"].items() if info.get("kind") == "evaluation"
              for r in results["records"] if r["check"] == c and r["explainer"] == explainers[0]
              and not r["step"].isdigit()]
    if scores:
        print("\nscores (mean [95% CI]):")
        print(' ' * width + ''.join(f"{(c + ' ' + m)[:22]:>24}" for c, m in scores))
        index = {(r["explainer"], r["check"], r["metric"]): r for r in results["records"] if not r["step"].isdigit()}
        for e in explainers:
            cells = []
            for c, m in scores:
                r = index.get((e, c, m))
                cells.append(f"{_score_cell(r):>24}")
            print(f"{e:<{width}}" + "".join(cells))
    for s in results.get("skipped", []):
        print(f"skipped {s['explainer']}: {s['reason']}")
    print(f"\nresults: {out_dir / 'results.json'}")


def cmd_run(args: argparse.Namespace) -> int:
    from .engine import audit_run_for, default_out_dir
    from .suites import DEFAULT_SUITE, load_suite

    suite = load_suite(args.suite or DEFAULT_SUITE)
    out_dir = Path(args.out) if args.out else default_out_dir(suite.name)
    if args.strict:  # gate mode: images in rounds, each verdict stopped once its confidence sequence decides it
        from .engine.gate import run_gate

        kwargs = run_kwargs(args)
        kwargs.pop("figures", None)
        results = run_gate(suite, out_dir=out_dir, budget=args.budget, **kwargs)
    else:
        results = audit_run_for(suite, out_dir=out_dir, **run_kwargs(args)).execute()
    _print_summary(results, out_dir)
    if results.get("model", {}).get("reference_weights") is False:
        print(f"note: {results['model']['name']} is not the shipped reference model (weights sha256 "
              f"{results['model'].get('weights_sha256', '?')[:16]}…): these results are not comparable with the board")
    return _gate(results, args)


def _gate(results: dict, args: argparse.Namespace) -> int:
    """Exit 1 when a verdict selected by --fail-on / --strict failed (gating a method claim in CI)."""
    messages = gate_messages(results, args)
    for message in messages:
        print(message, file=sys.stderr)
    return 1 if messages else 0


def cmd_submit(args: argparse.Namespace) -> int:
    from .submissions import submit

    docs = submit(args.method, suites=args.suites, root=Path(args.dir), name=args.name,
                  timeout_s=args.timeout, memory_mb=args.memory_mb, progress=not args.no_progress,
                  n=args.n, seed=args.seed, trust_code=args.trust_code, gate=bool(args.strict))
    if not docs:
        print("sanitycheck: error: no suite takes this method's input kind", file=sys.stderr)
        return 2
    status = 0
    for suite, doc in docs.items():
        name = doc["method"]["name"]
        if doc.get("refused_by_gate"):
            print(f"{suite}: refused by the sequential gate, nothing written to the board "
                  f"({doc['refused_by_gate']['reason']})")
        else:
            print(f"{suite}: wrote {Path(args.dir) / 'submissions' / name / (suite + '.json')}")
        for v in doc["verdicts"]:
            print(f"  {_STATUS_CELL[verdict_status(v)]} {v['check']}: {v['reason']}")
        status = max(status, _gate(doc, args))
    return status


def cmd_publish(args: argparse.Namespace) -> int:
    from .io import read_json
    from .submissions import publish_run

    for path in publish_run(read_json(Path(args.results)), root=Path(args.dir)):
        print(f"wrote {path}")
    return 0


def _verdict_status(v: dict) -> str:
    return str(v.get("status") or ("pass" if v.get("passed") else "fail"))


def cmd_validate(args: argparse.Namespace) -> int:
    from .submissions import validate_file

    bad = 0
    for path in args.paths:
        report: dict = {}
        problems = validate_file(Path(path), rerun=not args.no_rerun, sample=args.sample, full=args.full,
                                 tolerance=args.tolerance, timeout_s=args.timeout, memory_mb=args.memory_mb,
                                 max_bytes=int(args.max_mb * 2**20), report=report, progress=not args.no_progress)
        if problems:
            bad += 1
            print(f"REJECTED {path}")
            for p in problems:
                print(f"  - {p}")
        else:
            how = "schema, suite version, the suite's current rules, aggregates, verdicts recomputed, source hash"
            if not args.no_rerun:
                what = (f"all {len(report['indices'])} inputs" if report.get("full") else
                        f"{len(report['indices'])} inputs drawn at random (seed {report['sample_seed']})")
                how += f", re-run of {what} within {args.tolerance:g} on weights {str(report.get('weights_sha256'))[:12]}…"
            print(f"OK {path} ({how})")
            for v in report.get("verdicts", []):
                print(f"  {_verdict_status(v).upper()} {v['check']}")
        if "indices" in report:
            print(f"  re-run sample: seed {report['sample_seed']}, indices {report['indices']}")
        for check, why in (report.get("not_rerun") or {}).items():
            print(f"  not re-run: {check} ({why})")
    return 1 if bad else 0


def cmd_clip_saliency(args: argparse.Namespace) -> int:
    from .report.saliency_grid import clip_saliency

    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    summary = clip_saliency(args.image, args.query, model=args.model, pretrained=args.pretrained, methods=methods,
                            out=args.out, size=args.size, grayscale="convert" if args.convert_grayscale else "error",
                            seed=args.seed, device=args.device, progress=not args.no_progress)
    out = Path(summary["out"])
    print(f"{summary['model']} ({summary['pretrained'] or 'random weights'}), image {summary['image']} at "
          f"{summary['input_size'][0]}x{summary['input_size'][1]}: cosine similarity to {summary['query']!r} = "
          f"{summary['cosine_similarity']:.4f}")
    _print_methods(summary, out)
    return 0


def _print_methods(summary: Dict[str, Any], out: Path) -> None:
    """Each method's seconds and file, the methods that do not apply, and the grid (clip-saliency, explain)."""
    for name, row in summary["methods"].items():
        print(f"  {name:<24} {row['seconds']:7.2f} s  {out / row['file'] if 'file' in row else ''}")
    for name, reason in summary["skipped"].items():
        print(f"  {name:<24} not applicable: {reason}")
    if summary["grid"]:
        print(f"grid: {out / summary['grid']}")


def _model_param(text: str):
    """``KEY=VALUE`` of ``--model-param``: VALUE as JSON (numbers, true/false), ``none``/``null`` as None, else a
    string."""
    import json

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. weights=none), got {text!r}")
    if value.strip().lower() in ("none", "null"):
        return key.strip(), None
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def cmd_explain(args: argparse.Namespace) -> int:
    from .report.saliency_grid import explain

    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    summary = explain(args.image, model=args.model, model_params=dict(args.model_param or []), methods=methods,
                      out=args.out, target=args.target, size=args.size, device=args.device,
                      progress=not args.no_progress)
    out = Path(summary["out"])
    notes = f" ({', '.join(summary['image_notes'])})" if summary["image_notes"] else ""
    print(f"{summary['model']}, image {summary['image']} at {summary['input_size'][0]}x{summary['input_size'][1]} "
          f"(resize {summary['resize']}, crop {summary['crop']}){notes}: top-5")
    for row in summary["top5"]:
        print(f"  {row['rank']}. {row['probability']:7.2%}  {row['class']:>4}  {row['name']}")
    t = summary["target"]
    print(f"explained: class {t['class']} {t['name']!r} ({t['how']}, p={t['probability']:.4f})")
    _print_methods(summary, out)
    print(f"summary: {out / 'summary.json'}")
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    from .report.run_figures import write_figures

    out = Path(args.out_dir)
    files = write_figures(out)
    names = [f for fs in files.values() for f in fs]
    for name in names:
        print(out / name)
    print(f"redrew {len(names)} figure(s) of {out} from its results.json and figure maps")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from .registry import CHECKS, DATASETS, EXPLAINERS, METRICS, MODELS
    from .suites import available_suites

    # explainers and metrics: a second column names the input kinds (suite input_kind) each supports
    modal = {"explainers": EXPLAINERS, "metrics": METRICS, "token_explainers": EXPLAINERS}
    sections = {"suites": list(available_suites()), "explainers": EXPLAINERS.names(), "models": MODELS.names(),
                "datasets": DATASETS.names(), "checks": CHECKS.names(), "metrics": METRICS.names()}
    if args.what == "token_explainers":  # before the registries were one: the text explainers
        sections["token_explainers"] = EXPLAINERS.names("text")
    from .modalities import MODALITIES

    sections["modalities"] = list(MODALITIES)
    wanted = [args.what] if args.what else list(sections)
    for key in wanted:
        column = "modalities" if key in modal else "work unit: what it needs" if key == "checks" else ""
        print(f"{key}:" + (f"{'':<{_LS_WIDTH - len(key) - 1}}   {column}" if column else ""))
        for name in sections[key]:
            if key in modal:
                print(f"  {name:<{_LS_WIDTH}} {', '.join(modal[key].modalities(name))}")
            elif key == "checks":  # the contract's declarations, read by the engine (imports the check)
                check = CHECKS.get(name)
                print(f"  {name:<{_LS_WIDTH}} {getattr(check, 'unit', '?')}: "
                      f"{', '.join(sorted(getattr(check, 'needs', ()))) or '-'}")
            elif key == "modalities":
                print(f"  {name:<{_LS_WIDTH}} {MODALITIES[name]}")
            else:
                print(f"  {name}")
    return 0


_LS_WIDTH = 26


def cmd_train(args: argparse.Namespace) -> int:
    from .models.reference_models import train

    models = train(args.name, force=args.force, export_reference=args.export_reference, cache_dir=args.cache_dir,
                   progress=not args.no_progress)
    for m in models:
        info = m.sanitycheck_info
        print(f"{info.get('cache_key')}  weights_sha256 {info['weights_sha256']}  reference={info['reference']}  "
              f"test_accuracy={info.get('test_accuracy')}")
    if not args.export_reference:
        print("retrained weights are not the shipped reference: results computed with them are not comparable "
              "with the board (SANITYCHECK_REFERENCE_WEIGHTS=0 makes runs use the model cache)")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from .report.leaderboard import build_leaderboard

    rerun = (not args.no_rerun) if args.rerun_suites is None else \
        [s.strip() for s in args.rerun_suites.split(",") if s.strip()]
    if args.rerun_suites is not None and args.no_rerun:
        from .errors import ConfigError

        raise ConfigError("--rerun-suites and --no-rerun contradict each other: give one")
    summary = build_leaderboard(Path(args.dir), rerun=rerun, sample=args.board_sample,
                                progress=not args.no_progress, timeout_s=args.timeout, memory_mb=args.memory_mb)
    for suite, methods in summary["suites"].items():
        print(f"{suite}: {len(methods)} method(s)")
    for path, problems in summary["rejected"].items():
        print(f"rejected {path}:", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
    for w in summary.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)
    print(f"wrote {Path(args.dir) / 'LEADERBOARD.md'} and {Path(args.dir) / 'index.html'}")
    return 0


def _add_limits(parser: argparse.ArgumentParser) -> None:
    from .submissions import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_S

    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help=f"wall-clock limit of the sandboxed method, seconds (default: {DEFAULT_TIMEOUT_S})")
    parser.add_argument("--memory-mb", type=int, default=DEFAULT_MEMORY_MB,
                        help=f"address-space limit of the sandboxed method, MiB (default: {DEFAULT_MEMORY_MB})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sanitycheck",
                                     description="Sanity checks for saliency explanations (Adebayo et al. 2018 and more).")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a suite (default: adebayo2018) and write results.json and figures")
    run.add_argument("suite", nargs="?", help="suite name or path to a suite YAML file")
    run.add_argument("--out", help="output directory (default: runs/<suite>-<timestamp>); re-using one resumes an "
                                   "interrupted run, and a rerun with other explainers or checks adds them "
                                   "(results.json keeps both); an existing file or a read-only path is refused")
    add_run_options(run)
    add_gate_options(run)
    run.add_argument("--budget", type=int, default=None, metavar="N",
                     help="with --strict: the most images the sequential gate may use per verdict (default: the "
                          "suite's n or --n)")
    run.set_defaults(func=cmd_run)

    sub_p = sub.add_parser("submit", help="run a method on every suite of its input kind (sandboxed) and write "
                                          "leaderboard/submissions/<method>/<suite>.json")
    sub_p.add_argument("method", help="registered name, 'package.module:attr' or 'path/to/file.py:attr'")
    sub_p.add_argument("--suites", type=lambda v: [x for x in v.split(",") if x], metavar="A,B",
                       help="suites to run (default: every suite of the method's input kind)")
    sub_p.add_argument("--name", help="method name on the board (default: the attribute or registry name)")
    sub_p.add_argument("--dir", default="leaderboard", help="leaderboard directory (default: leaderboard)")
    sub_p.add_argument("--n", type=int, help="number of images (default: the suite's)")
    sub_p.add_argument("--seed", type=int, help="run seed (default: the suite's)")
    _add_limits(sub_p)
    sub_p.add_argument("--trust-code", action="store_true",
                       help="where the OS sandbox (bubblewrap with user namespaces) is unavailable, run the method "
                            "anyway with the Python audit hook only, which is not a boundary against native code "
                            "(recorded as method.sandbox: 'audit-hook only'); without it submit refuses and says why")
    sub_p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_gate_options(sub_p)
    sub_p.set_defaults(func=cmd_submit)

    pub = sub.add_parser("publish", help="split a run of built-in explainers into leaderboard result files")
    pub.add_argument("results", help="a run's results.json")
    pub.add_argument("--dir", default="leaderboard", help="leaderboard directory (default: leaderboard)")
    pub.set_defaults(func=cmd_publish)

    val = sub.add_parser("validate", help="check result files: schema, suite version and rules, consistency, re-run "
                                          "of a random sample")
    val.add_argument("paths", nargs="+", help="result files (leaderboard/submissions/<method>/<suite>.json)")
    val.add_argument("--sample", type=int, default=16, help="inputs re-run per file, drawn at random at validation "
                                                            "time (default: 16)")
    val.add_argument("--full", action="store_true", help="re-run every input of the file (slow, exhaustive)")
    val.add_argument("--max-mb", type=float, default=64, help="refuse documents larger than this, MiB (default: 64)")
    val.add_argument("--no-progress", action="store_true", help="hide progress bars of the re-run")
    val.add_argument("--tolerance", type=float, default=1e-4, help="max |difference| of a re-run score (default: 1e-4)")
    val.add_argument("--no-rerun", action="store_true", help="static checks only (no method code is run)")
    _add_limits(val)
    val.set_defaults(func=cmd_validate)
    cs = sub.add_parser("clip-saliency", help="each saliency method's map of a CLIP model's image-text similarity, "
                                              "as PNGs over the image")
    cs.add_argument("image", help="an RGB image file (PNG, JPEG, ...)")
    cs.add_argument("query", help="the text whose similarity to the image is explained, e.g. 'a photo of a cat'")
    cs.add_argument("--model", default="ViT-B-32", help="open_clip model name, or 'sanitycheck-tiny-vit' (the tiny CLIP "
                                                       "trained here; offline; knows only the synthetic captions' "
                                                       "words) (default: ViT-B-32)")
    cs.add_argument("--pretrained", help="weights: an open_clip tag, a local weights file, 'trained' (tiny model), or "
                                         "'none' for random weights (default: 'openai', or 'trained' for the tiny model)."
                                         " Weights come from the local caches only unless HF_HUB_OFFLINE=0")
    cs.add_argument("--methods", metavar="A,B", help="comma-separated explainers (default: gradient, gradient_x_input, "
                                                     "integrated_gradients, smoothgrad, vit_gradcam, vit_chefer, "
                                                     "vit_attention_rollout, occlusion)")
    cs.add_argument("--out", help="output directory (default: runs/clip-saliency-<image>-<time>)")
    cs.add_argument("--size", type=int, default=224, help="side of the written PNGs in pixels (default: 224); the "
                                                          "model sees the image at its own input size")
    cs.add_argument("--convert-grayscale", action="store_true", help="accept a grayscale image (replicated to RGB) "
                                                                     "instead of refusing it")
    cs.add_argument("--seed", type=int, default=0, help="seed of random weights (--pretrained none) (default: 0)")
    cs.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    cs.add_argument("--no-progress", action="store_true", help="hide the progress bar of training the tiny CLIP "
                                                                "(first use of --model sanitycheck-tiny-vit only)")
    cs.set_defaults(func=cmd_clip_saliency)
    ex = sub.add_parser("explain", help="an image classifier's top-5 classes on a photo, and each saliency method's "
                                        "map of the explained class as PNGs over the photo")
    ex.add_argument("image", help="a photo (PNG, JPEG, ...); resized and center-cropped as the model expects")
    ex.add_argument("--model", default="efficientnet_lite0", help="registered image classifier or import path "
                                                                  "(default: efficientnet_lite0)")
    ex.add_argument("--model-param", action="append", type=_model_param, metavar="KEY=VALUE",
                    help="a parameter of the model factory, repeatable; VALUE is JSON or 'none' "
                         "(e.g. --model resnet18 --model-param weights=none for random weights)")
    ex.add_argument("--methods", metavar="A,B", help="comma-separated explainers (default: gradient, gradient_x_input, "
                                                     "smoothgrad, vargrad, integrated_gradients, guided_backprop, "
                                                     "gradcam, guided_gradcam, occlusion, sobel, noise)")
    ex.add_argument("--target", help="the class to explain: an index (0..n_classes-1) or a class name (exact or a "
                                     "unique part of one) (default: the predicted class)")
    ex.add_argument("--out", help="output directory (default: runs/explain-<image>-<time>)")
    ex.add_argument("--size", type=int, default=224, help="side of the written PNGs in pixels (default: 224)")
    ex.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    ex.add_argument("--no-progress", action="store_true", help="hide the progress bar over methods")
    ex.set_defaults(func=cmd_explain)
    fig = sub.add_parser("figures", help="redraw every figure of a run from its results.json and the figure maps "
                                         "it names (no model needed)")
    fig.add_argument("out_dir", help="the --out directory of a run")
    fig.set_defaults(func=cmd_figures)
    ls = sub.add_parser("ls", help="list suites, explainers, models, datasets, checks and metrics")
    ls.add_argument("what", nargs="?", choices=["suites", "explainers", "token_explainers", "models", "datasets",
                                                             "checks", "metrics", "modalities"])
    ls.set_defaults(func=cmd_ls)
    tr = sub.add_parser("train", help="retrain a reference model (or every model of a built-in suite) through the "
                        "training pipeline, ignoring the shipped weights")
    tr.add_argument("name", help="fmnist_cnn, fmnist_cnn_random_labels, text_attention_rotten_tomatoes, ... or a suite")
    tr.add_argument("--force", action="store_true", help="ignore the model cache too: train from scratch")
    tr.add_argument("--export-reference", action="store_true",
                    help="maintainers: write the trained models into sanitycheck/weights/ as the new references")
    tr.add_argument("--cache-dir", default=None, help="model cache (default: $SANITYCHECK_CACHE or ~/.cache/sanitycheck)")
    tr.add_argument("--no-progress", action="store_true", help="hide progress bars")
    tr.set_defaults(func=cmd_train)
    board = sub.add_parser("leaderboard", help="regenerate <dir>/LEADERBOARD.md, index.html and thumbnails from "
                                               "the valid files in <dir>/submissions/")
    board.add_argument("--dir", default="leaderboard", help="leaderboard directory (default: leaderboard)")
    board.add_argument("--board-sample", type=int, default=4, help="inputs re-run per file on every build, drawn "
                                                                  "at random (default: 4)")
    board.add_argument("--no-rerun", action="store_true", help="static validation only (no method is re-run); "
                                                               "the board says so")
    board.add_argument("--rerun-suites", default=None, metavar="SUITES",
                       help="re-run only the files of these suites (comma-separated); the others are validated "
                            "statically, and the board says which were re-run (make run: its own suite)")
    board.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_limits(board)
    board.set_defaults(func=cmd_leaderboard)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from .allocator import tune_for_tensors

    tune_for_tensors()  # what the Makefile's MALLOC_* settings do, for users who call the CLI directly
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SanityCheckError as err:
        print(f"sanitycheck: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nsanitycheck: interrupted; finished work is cached — re-run with the same --out to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
