"""Compile every pipeline to pipelines/compiled/<name>.yaml (`make compile`); --check fails if stale.

The image (VISALIGN_IMAGE) and cluster settings (VISALIGN_CLUSTER_SETTINGS) are read when the
pipeline modules are imported, so compile with other settings in a new process (as the chart's
upload Job does), with --out-dir.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

COMPILED_DIR = Path(__file__).parent / "compiled"


def compile_all(out_dir: Path) -> list[Path]:
    from kfp import compiler
    from visalign_pipelines import pipelines

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fn in sorted(pipelines().items()):
        path = out_dir / f"{name}.yaml"
        compiler.Compiler().compile(fn, str(path))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="Compare with the committed IR instead of writing it.")
    parser.add_argument("--out-dir", type=Path, default=COMPILED_DIR, help="Where to write the IR (default: %(default)s).")
    args = parser.parse_args(argv)
    if not args.check:
        for p in compile_all(args.out_dir):
            print(f"wrote {p}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        stale = [p.name for p in compile_all(Path(tmp))
                 if not (COMPILED_DIR / p.name).exists() or (COMPILED_DIR / p.name).read_text() != p.read_text()]
    if stale:
        print(f"compiled IR is out of date: {stale}; run `make compile`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
