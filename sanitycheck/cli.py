"""``sanitycheck run | ls``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from .errors import SanityCheckError
from .options import add_run_options, run_kwargs


def _print_summary(results: dict, out_dir: Path) -> None:
    verdicts = results["verdicts"]
    checks = list(dict.fromkeys(v["check"] for v in verdicts))
    explainers = list(dict.fromkeys(v["explainer"] for v in verdicts))
    table = {(v["explainer"], v["check"]): v for v in verdicts}
    width = max(len(e) for e in explainers) + 2
    print(f"\n{results['suite']} v{results['suite_version']} on {results['model']['name']} / "
          f"{results['dataset']['name']} (n={results['dataset']['n']}, seed={results['seed']})")
    print(" " * width + "".join(f"{c[:26]:>28}" for c in checks))
    for e in explainers:
        cells = []
        for c in checks:
            v = table.get((e, c))
            if v is None:
                cells.append(f"{'-':>28}")
            else:
                m = "undef" if v["measured"] is None else f"{v['measured']:.2f}"
                cells.append(f"{('PASS' if v['passed'] else 'FAIL') + ' (' + m + ')':>28}")
        print(f"{e:<{width}}" + "".join(cells))
    print("(value: the deciding upper 95% CI bound of the verdict metric; see results.json for reasons)")
    for s in results.get("skipped", []):
        print(f"skipped {s['explainer']}: {s['reason']}")
    print(f"\nresults: {out_dir / 'results.json'}")


def cmd_run(args: argparse.Namespace) -> int:
    from .runner import AuditRun, default_out_dir
    from .suites import DEFAULT_SUITE, load_suite

    suite = load_suite(args.suite or DEFAULT_SUITE)
    out_dir = Path(args.out) if args.out else default_out_dir(suite.name)
    results = AuditRun(suite, out_dir=out_dir, **run_kwargs(args)).execute()
    _print_summary(results, out_dir)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from .registry import CHECKS, DATASETS, EXPLAINERS, METRICS, MODELS
    from .suites import available_suites

    sections = {"suites": list(available_suites()), "explainers": EXPLAINERS.names(), "models": MODELS.names(),
                "datasets": DATASETS.names(), "checks": CHECKS.names(), "metrics": METRICS.names()}
    wanted = [args.what] if args.what else list(sections)
    for key in wanted:
        print(f"{key}:")
        for name in sections[key]:
            print(f"  {name}")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from .report.leaderboard import write_leaderboard

    files = [Path(p) for p in args.results] or sorted(Path(args.dir).glob("results/*.json"))
    if not files:
        print(f"sanitycheck: error: no result files given and none in {Path(args.dir) / 'results'}", file=sys.stderr)
        return 2
    out = write_leaderboard(files, Path(args.dir) / "LEADERBOARD.md")
    print(f"wrote {out} from {len(files)} result file(s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sanitycheck",
                                     description="Sanity checks for saliency explanations (Adebayo et al. 2018 and more).")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a suite (default: adebayo2018) and write results.json and figures")
    run.add_argument("suite", nargs="?", help="suite name or path to a suite YAML file")
    run.add_argument("--out", help="output directory (default: runs/<suite>-<timestamp>); "
                                   "re-using one resumes an interrupted run")
    add_run_options(run)
    run.set_defaults(func=cmd_run)
    ls = sub.add_parser("ls", help="list suites, explainers, models, datasets, checks and metrics")
    ls.add_argument("what", nargs="?", choices=["suites", "explainers", "models", "datasets", "checks", "metrics"])
    ls.set_defaults(func=cmd_ls)
    board = sub.add_parser("leaderboard", help="regenerate <dir>/LEADERBOARD.md from result files")
    board.add_argument("results", nargs="*", help="results.json files (default: <dir>/results/*.json)")
    board.add_argument("--dir", default="leaderboard", help="leaderboard directory (default: leaderboard)")
    board.set_defaults(func=cmd_leaderboard)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
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
