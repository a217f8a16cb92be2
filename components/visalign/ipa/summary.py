"""What an `ipa` run did, round by round: verified rate, pairs, and the benchmarks after each round.

The ipa pipeline has several tasks per stage (one collect, pairs, train and evaluate task per
round), so its kfp.local run directory is read through the compiled IR, which maps each task name
(`evaluate-4`) to its display name (`evaluate after round 2`).
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any


def display_names(compiled: str | os.PathLike | None = None) -> dict[str, str]:
    """Task name -> display name, over every DAG of the compiled ipa pipeline."""
    import yaml

    if compiled is None:  # the IR shipped with the pipelines package (read as data: it sits above this one)
        compiled = str(resources.files("visalign_pipelines") / "compiled" / "ipa.yaml")
    spec = next(yaml.safe_load_all(Path(compiled).read_text()))
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    return {name: task.get("taskInfo", {}).get("name", name) for dag in dags for name, task in dag["tasks"].items()}


def _report(run_dir: Path, task: str) -> dict[str, Any] | None:
    found = sorted(run_dir.glob(f"{task}/*/report.json"))
    return json.loads(found[0].read_text()) if found else None


def summarize(run_dir: str | os.PathLike, timings: dict[str, float] | None = None) -> dict[str, Any]:
    """The demo's summary shape (stages, metrics, registry) plus `rounds` and `evaluations`."""
    run_dir = Path(run_dir)
    names = display_names()
    ran = sorted((d.name for d in run_dir.iterdir() if d.is_dir() and d.name in names),
                 key=lambda t: (d.stat().st_mtime if (d := run_dir / t).exists() else 0))
    stages, evaluations, rounds, registry = [], {}, [], {}
    for task in ran:
        report = _report(run_dir, task)
        if report is None:
            continue
        stages.append({"name": names[task], "rows_in": report.get("rows_in"), "rows_out": report.get("rows_out"),
                       "seconds": report.get("seconds")})
        if task.startswith("ipa-pairs"):
            rounds = max(rounds, report.get("rounds", []), key=len)
        if task.startswith("register"):
            registry = report
    # after round 1, after round 2, ..., then the final model
    for task in sorted((t for t in ran if t.startswith("evaluate")), key=lambda t: ("final" in names[t], names[t])):
        results = json.loads((run_dir / task / "results" / "results.json").read_text())
        evaluations[names[task]] = {"base": results.get("base", {}), "aligned": results.get("aligned", {}),
                                    "paired": results.get("_paired")}
    final = next((v for k, v in evaluations.items() if "final" in k), {"base": {}, "aligned": {}})
    return {
        "recipe": "ipa", "stages": stages, "metrics": {k: final[k] for k in ("base", "aligned")},
        "paired": final.get("paired"), "rounds": rounds, "evaluations": evaluations,
        "registry": {"model": registry.get("model"), "version": registry.get("version"),
                     "alias": registry.get("alias"), "reasons": registry.get("reasons")},
        "timings": timings or {}, "run_dir": str(run_dir),
    }


def print_rounds(summary: dict[str, Any], metrics: tuple[str, ...] = ("accuracy", "f1")) -> None:
    print("\nround  seeds  candidates  verified  unparseable  new pairs  pairs so far  pending")
    for r in summary["rounds"]:
        print(f"{r['round']:>5}{r['seeds']:>7}{r['candidates']:>12}{r['verified_rate']:>10.3f}"
              f"{r['verdicts'].get('unparseable', 0):>13}{r['new_pairs']:>11}{r['pairs_so_far']:>14}"
              f"{r['pending_after']:>9}")
    evaluations = summary["evaluations"]
    if not evaluations:
        return
    first = next(iter(evaluations.values()))
    labels = [name.removeprefix("evaluate ") for name in evaluations]
    print(f"\n{'benchmark metric':<26}{'base':>8}" + "".join(f"{label:>20}" for label in labels))
    for bench, values in first["base"].items():
        for m in metrics:
            if m in values:
                print(f"{bench + '/' + m:<26}{values[m]:>8.3f}" + "".join(
                    f"{ev['aligned'].get(bench, {}).get(m, float('nan')):>20.3f}" for ev in evaluations.values()))
