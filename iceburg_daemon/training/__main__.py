"""`python -m iceburg_daemon.training --run-dir DIR` (one run), `--eval-dir DIR` (one evaluation) or
`--import-gguf FILE --out DIR` (a base)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m iceburg_daemon.training")
    p.add_argument("--run-dir", type=Path, help="run folder prepared by the daemon")
    p.add_argument("--eval-dir", type=Path, help="evaluation folder prepared by the daemon (request.json)")
    p.add_argument("--import-gguf", type=Path, metavar="FILE", help="convert a GGUF file into a trainable base")
    p.add_argument("--out", type=Path, help="with --import-gguf: the folder to write")
    args = p.parse_args()
    if args.run_dir:
        from iceburg_daemon.training.child import main as run

        return run(args.run_dir.resolve())
    if args.eval_dir:
        from iceburg_daemon.training.evaluate import main as evaluate

        return evaluate(args.eval_dir.resolve())
    if args.import_gguf and args.out:
        from iceburg_daemon.training.gguf_import import import_gguf

        print(import_gguf(args.import_gguf, args.out))
        return 0
    p.error("give --run-dir, --eval-dir, or --import-gguf with --out")
    return 2


if __name__ == "__main__":
    sys.exit(main())
