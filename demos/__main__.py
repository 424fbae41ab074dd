"""The demo runner: ``python -m demos list | all | training | NAME [--quick]
[--backend numpy|cupy] [--out DIR] [--seed N]``, from the repository root.

``all`` runs the seed tutorial's experiments; ``training`` the training experiments."""
from __future__ import annotations

import argparse
import sys
import time
import traceback

from . import DEMOS, GROUPS, load


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m demos",
        description="Run the seed tutorial's experiments on tinynorm.",
    )
    p.add_argument("command", help="'list', 'all' (the seed's experiments), 'training' (the "
                                   "training experiments), or a demo name: " + ", ".join(DEMOS))
    p.add_argument("--quick", action="store_true", help="small sizes, for a fast check (CI)")
    p.add_argument("--backend", choices=("numpy", "cupy"), default="numpy")
    p.add_argument("--out", default="tinynorm-out",
                   help="folder for figures (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    return p


def _list() -> int:
    width = max(len(n) for n in DEMOS)
    for name in DEMOS:
        try:
            description = load(name).DESCRIPTION
        except Exception as err:  # a demo that cannot be imported is listed with the reason
            description = f"(unavailable: {type(err).__name__}: {err})"
        print(f"{name.ljust(width)}  {description}")
    return 0


def _run(names, args) -> int:
    summary, failed = [], []
    for name in names:
        print(f"=== {name} " + "=" * max(0, 70 - len(name)))
        t0 = time.perf_counter()
        try:
            result = load(name).main(quick=args.quick, out=args.out, seed=args.seed,
                                     backend=args.backend)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            summary.append((name, time.perf_counter() - t0, "FAILED (traceback above)"))
            continue
        verdict = result.get("verdict", "") if isinstance(result, dict) else ""
        summary.append((name, time.perf_counter() - t0, verdict))
        print()
    if len(names) > 1:
        print("=== summary " + "=" * 59)
        width = max(len(n) for n in names)
        for name, seconds, verdict in summary:
            print(f"{name.ljust(width)}  {seconds:6.1f} s  {verdict}")
        print(f"total {sum(s for _, s, _ in summary):.1f} s; figures in {args.out}/")
    return 1 if failed else 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "list":
        return _list()
    try:  # fail once, with the fix, rather than once per demo
        import tinynorm

        tinynorm.backend.module(args.backend)
    except RuntimeError as err:
        print(f"--backend {args.backend}: {err}", file=sys.stderr)
        return 2
    if args.command in GROUPS:
        return _run(GROUPS[args.command], args)
    if args.command not in DEMOS:
        print(f"unknown demo {args.command!r}; choose 'list', 'all', 'training' or one of: "
              f"{', '.join(DEMOS)}", file=sys.stderr)
        return 2
    return _run([args.command], args)


if __name__ == "__main__":
    sys.exit(main())
