"""The demo runner: ``python -m demos list | all | training | NAME [--quick]
[--backend numpy|cupy] [--out DIR] [--seed N]``, from the repository root.

``all`` runs the seed tutorial's experiments; ``training`` the training experiments."""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

from . import DEMOS, GROUPS, load


def _seed(text: str) -> int:
    """--seed: a non-negative integer (NumPy's generators take no negative seed)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _out_problem(out: str) -> str | None:
    """Why ``out`` cannot be the output folder, or None: it must be a writable folder, or
    not exist yet under a writable one (the demos create it). Nothing is created here."""
    if not out:
        return "an empty name is no folder"
    path = os.path.abspath(out)
    if os.path.exists(path):
        if not os.path.isdir(path):
            return f"{out!r} exists and is not a folder"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"{out!r} is a folder this user cannot write into"
        return None
    parent = os.path.dirname(path)
    while not os.path.exists(parent):  # the demos make every missing folder on the way
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"{out!r} cannot be created: {parent!r} is not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{out!r} cannot be created: {parent!r} is not writable"
    return None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m demos",
        description="Run the seed tutorial's experiments on tinynorm.",
    )
    p.add_argument("command", help="'list', 'all' (the seed's experiments), 'training' (the "
                                   "training experiments), or a demo name: " + ", ".join(DEMOS))
    p.add_argument("--quick", action="store_true",
                   help="small sizes, for a fast check (CI); layernorm_check runs the seed's "
                        "shapes, which are already small, either way")
    p.add_argument("--backend", choices=("numpy", "cupy"), default="numpy",
                   help="array library to run on: numpy (CPU) or cupy (an NVIDIA GPU; needs "
                        "CuPy installed) (default: %(default)s)")
    p.add_argument("--out", default="tinynorm-out", metavar="DIR",
                   help="folder for the PNG figures, and the training demos' JSON results; "
                        "created if missing (default: %(default)s)")
    p.add_argument("--seed", type=_seed, default=0, metavar="N",
                   help="non-negative integer seeding every generator; a demo of several "
                        "seeds uses N, N + 1, ... (default: %(default)s)")
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
    # every argument is checked before anything runs: fail once, with the fix, rather than
    # after minutes of training or once per demo
    if args.command not in GROUPS and args.command not in DEMOS:
        print(f"unknown demo {args.command!r}; choose 'list', 'all', 'training' or one of: "
              f"{', '.join(DEMOS)}", file=sys.stderr)
        return 2
    problem = _out_problem(args.out)
    if problem:
        print(f"--out: {problem}", file=sys.stderr)
        return 2
    try:
        import tinynorm

        tinynorm.backend.module(args.backend)
    except RuntimeError as err:
        print(f"--backend {args.backend}: {err}", file=sys.stderr)
        return 2
    return _run(GROUPS.get(args.command, [args.command]), args)


if __name__ == "__main__":
    sys.exit(main())
