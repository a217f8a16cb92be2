"""Training cost of the reference model: the inline reference forward vs reference log-probs precomputed
once per pair (visalign.stages.reference), in one run on the bench model.

Each configuration trains in its own process, so its peak memory (ru_maxrss) is its own:
- seva: LoRA, the pairs fed twice (data_repeats=2), 1 epoch;
- mia_dpo: LoRA, 3 epochs;
- mpo_full: full parameters (MPO's setting and loss mix), 1 epoch: the inline path holds a reference copy.
Pairs/s counts every pair a step trains on (repeats and epochs included) over the whole train stage's wall
time, the reference pass included. The bench model is a LLaVA built from config (LLaVA-1.5's 336 px / 14 px
patches: 576 image tokens per prompt) with a Llama language model; its size is in the results.

    python bench/train_cost.py --out bench-output          # all, inline vs precomputed
    python bench/train_cost.py --one seva:on --work DIR     # one configuration (what the above runs)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COLOURS = ["red", "green", "blue", "yellow", "purple"]
CONFIGS = {
    "seva": dict(data_repeats=2, num_epochs=1.0),
    "mia_dpo": dict(data_repeats=1, num_epochs=3.0),
    "mpo_full": dict(data_repeats=1, num_epochs=1.0, lora_r=0, loss_type=("sigmoid", "bco_pair", "sft"),
                     loss_weights=(0.8, 0.2, 1.0), learning_rate=5e-6),
}
MODEL = dict(image_size=336, patch_size=14, text_hidden=512, text_layers=8, vision_hidden=256, vision_layers=4)


def build_inputs(work: Path, n_pairs: int) -> tuple[Path, Path]:
    """The bench model and n pairs ("What colour is the circle?" on drawn circles)."""
    from PIL import Image, ImageDraw

    from visalign import schema
    from visalign.toyworld.model import build_tiny_vlm

    model = build_tiny_vlm(work / "model", ["What colour is the circle? It is"] + COLOURS * 10, **MODEL)
    pairs_dir = work / "pairs"
    (pairs_dir / "images").mkdir(parents=True)
    rng, pairs = random.Random(0), []
    for i in range(n_pairs):
        im = Image.new("RGB", (336, 336), "white")
        c = rng.choice(COLOURS)
        x, y = rng.randint(0, 170), rng.randint(0, 170)
        ImageDraw.Draw(im).ellipse((x, y, x + 160, y + 160), fill=c)
        im.save(pairs_dir / "images" / f"{i}.png")
        wrong = COLOURS[(COLOURS.index(c) + 1) % len(COLOURS)]
        pairs.append(schema.Pair(id=str(i), images=[f"images/{i}.png"], prompt="What colour is the circle?",
                                 chosen=f"It is {c}.", rejected=f"It is {wrong}.", prompt_id=str(i)))
    schema.write_rows(pairs_dir / schema.PAIRS_FILE, pairs)
    return model, pairs_dir


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_one(spec: str, work: Path, n_pairs: int) -> dict:
    """Train one configuration ('name:on' or 'name:off') in this process; its cost."""
    name, setting = spec.split(":")
    import torch

    from visalign.recipes import TrainParams
    from visalign.stages import train

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1)))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work}/mlflow-{name}-{setting}.db"
    params = TrainParams(**{**dict(lora_r=16, lora_alpha=32, learning_rate=5e-5, per_device_batch_size=2,
                                   gradient_accumulation_steps=1, max_length=640, deepspeed=None,
                                   gradient_checkpointing=True, warmup_ratio=0.0, save_steps=10_000,
                                   reference_batch_size=8), **CONFIGS[name], "precompute_reference": setting})
    before = rss_mb()
    start = time.perf_counter()
    report = train.run(pairs_dir=str(work / "pairs"), model=str(work / "model"),
                       output_dir=str(work / f"out-{name}-{setting}"), params=params)
    seconds = time.perf_counter() - start
    trained = n_pairs * params.data_repeats * params.num_epochs
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ref = report.extra["reference"]
    return {"config": name, "precompute_reference": setting, "pairs": n_pairs, "pairs_trained": trained,
            "stage_seconds": round(seconds, 2), "pairs_per_s": round(trained / seconds, 4),
            "train_seconds": report.extra["train_seconds"], "reference_pass_seconds": ref.get("seconds", 0.0),
            "reference_model_loaded": ref["reference_model_loaded"], "peak_rss_mb": round(peak, 1),
            "rss_before_train_mb": round(before, 1), "train_peak_mb": round(peak - before, 1),
            "final_loss": report.extra["final_loss"]}


def run_all(work: Path, n_pairs: int) -> dict:
    """Every configuration inline and precomputed, each in a fresh process; the ratios."""
    import torch

    model, _ = build_inputs(work, n_pairs)
    from transformers import AutoConfig, AutoModelForImageTextToText

    with torch.device("meta"):
        size = sum(p.numel() for p in AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(model))
                   .parameters())
    out: dict = {"model": {**MODEL, "parameters": size, "image_tokens": (336 // 14) ** 2}, "runs": []}
    for name in CONFIGS:
        for setting in ("off", "on"):
            done = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", f"{name}:{setting}", "--work", str(work),
                                   "--pairs", str(n_pairs)], check=True, capture_output=True, text=True, cwd=work)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            print(json.dumps(row), file=sys.stderr)
            out["runs"].append(row)
    by = {(r["config"], r["precompute_reference"]): r for r in out["runs"]}
    out["ratios"] = {name: {
        "pairs_per_s_precomputed_over_inline": round(by[name, "on"]["pairs_per_s"] / by[name, "off"]["pairs_per_s"], 3),
        "peak_rss_precomputed_over_inline": round(by[name, "on"]["peak_rss_mb"] / by[name, "off"]["peak_rss_mb"], 3),
        "train_peak_precomputed_over_inline": round(by[name, "on"]["train_peak_mb"] / by[name, "off"]["train_peak_mb"],
                                                    3),
    } for name in CONFIGS}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench-output")
    ap.add_argument("--pairs", type=int, default=12)
    ap.add_argument("--one", help="Run one configuration, name:on|off (needs --work holding model/ and pairs/).")
    ap.add_argument("--work")
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, Path(args.work), args.pairs)))
        return 0
    out = Path(args.out).resolve()
    results = run_all(Path(tempfile.mkdtemp(prefix="visalign-train-cost-")), args.pairs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_cost.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
