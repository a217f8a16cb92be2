"""`make efficacy`: does each recipe's demo improve its own target? (Not part of `make test`.)

Runs `visalign demo` for each recipe at several seeds (world and base model follow the seed) at the
recipe's toy profile, and tabulates, per run, the target metric of the base and the aligned model,
their difference with evaluate's paired interval and p-value on the same rows, the pairs trained on,
the registry's decision and the wall time. Writes efficacy-output/efficacy.json and efficacy.md and,
with --readme, replaces the table between the README's efficacy markers.

    python bench/efficacy.py --out efficacy-output --seeds 0 1 2 [--recipes seva mpo] [--readme README.md]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

RECIPES = ("seva", "mia-dpo", "mpo", "ipa")
START, END = "<!-- efficacy:start -->", "<!-- efficacy:end -->"


def target_of(recipe: str) -> str:
    from visalign import recipes

    return recipes.load(recipe, "toy").register.target_metric


def row_of(recipe: str, seed: int, summary: dict[str, Any], seconds: float) -> dict[str, Any]:
    """One table row from a demo's summary: the target's base, aligned, paired difference and test."""
    target = target_of(recipe)
    bench, _, metric = target.partition("/")
    paired = (summary.get("paired") or {}).get("models", {}).get("aligned", {}).get(bench, {}).get(metric, {})
    trains = [s for s in summary["stages"] if s["name"].startswith("train")]
    return {"recipe": recipe, "seed": seed, "target": target,
            "base": summary["metrics"]["base"].get(bench, {}).get(metric),
            "aligned": summary["metrics"]["aligned"].get(bench, {}).get(metric),
            "difference": paired.get("difference"), "low": paired.get("low"), "high": paired.get("high"),
            "p_value": paired.get("p_value"), "test": paired.get("test"),
            "rows": int(summary["metrics"]["base"].get(bench, {}).get("n", 0)),
            "pairs": trains[-1]["rows_out"] if trains else None,
            "alias": summary["registry"].get("alias"), "seconds": round(seconds, 1),
            "improved": paired.get("low") is not None and paired["low"] > 0}


def _fmt(v: Any, spec: str) -> str:
    return "" if v is None else format(v, spec)


def table(rows: list[dict[str, Any]]) -> str:
    head = "| recipe | seed | target | rows | base | aligned | difference | 95% interval | p (test) | pairs | " \
           "registry | seconds |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        interval = "" if r["low"] is None else f"[{r['low']:+.3f}, {r['high']:+.3f}]"
        lines.append(f"| {r['recipe']} | {r['seed']} | {r['target']} | {r['rows']} | {_fmt(r['base'], '.3f')} | "
                     f"{_fmt(r['aligned'], '.3f')} | {_fmt(r['difference'], '+.3f')} | {interval} | "
                     f"{_fmt(r['p_value'], '.3g')} ({r['test'] or '-'}) | {_fmt(r['pairs'], 'd')} | {r['alias']} | "
                     f"{r['seconds']:.0f} |")
    improved = {}
    for r in rows:
        improved.setdefault(r["recipe"], []).append(r["improved"])
    lines += ["", "Improved beyond its interval (lower bound > 0): " + ", ".join(
        f"{k} {sum(v)} of {len(v)} seeds" for k, v in improved.items()) + "."]
    return "\n".join(lines) + "\n"


def update_readme(path: Path, text: str) -> None:
    readme = path.read_text(encoding="utf-8")
    if START not in readme or END not in readme:
        raise SystemExit(f"{path}: no '{START}' ... '{END}' markers to put the table between")
    before, rest = readme.split(START, 1)
    path.write_text(before + START + "\n" + text + END + rest.split(END, 1)[1], encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    from visalign import demo

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="efficacy-output", help="Where runs, efficacy.json and efficacy.md go.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="World and base-model seeds.")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES, help="Recipes to run.")
    parser.add_argument("--readme", default=None, help="Also write the table into this README between the markers.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    results = out / "efficacy.json"
    for recipe in args.recipes:
        for seed in args.seeds:
            start = time.monotonic()
            # one work folder: a seed's world is built once and shared by the recipes
            summary = demo.run(recipe=recipe, out=out / "work", seed=seed)
            (out / "runs" / f"{recipe}-{seed}.json").write_text(json.dumps(summary, indent=2))
            rows.append(row_of(recipe, seed, summary, time.monotonic() - start))
            results.write_text(json.dumps({"machine": platform.platform(), "rows": rows}, indent=2))
    text = table(rows)
    (out / "efficacy.md").write_text(text)
    print(text)
    if args.readme:
        update_readme(Path(args.readme), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
