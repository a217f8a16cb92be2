"""`make bench`: throughput of the stages on this machine, written to bench-output/results.json.

Measures, in one process and one run (ratios are only meaningful within a run on these shared
machines): sample rows/s; augment views/s (diffusion and a pixel recipe); rollout responses/s
batched vs one prompt at a time (and whether their outputs agree); train samples/s of DPO+LoRA.
The model is an untrained tiny LLaVA built from config; the point is the pipeline's overhead and
the batching ratio, not model quality. Then train_cost.py: the reference model's cost, inline vs
precomputed reference log-probs, on a larger bench model (bench-output/train_cost.json too).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = ["red", "green", "blue", "yellow", "purple"]


def make_seeds(root: Path, n_images: int) -> Path:
    (root / "images").mkdir(parents=True)
    rng = random.Random(0)
    rows = []
    for i in range(n_images):
        im = Image.new("RGB", (64, 64), "white")
        c = rng.choice(COLOURS)
        x, y = rng.randint(0, 30), rng.randint(0, 30)
        ImageDraw.Draw(im).ellipse((x, y, x + 30, y + 30), fill=c)
        im.save(root / "images" / f"{i}.png")
        rows.append({"id": str(i), "image": f"images/{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the circle?"}, {"from": "gpt", "value": c}]})
    (root / "llava.json").write_text(json.dumps(rows))
    return root / "llava.json"


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench-output")
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--skip-train-cost", action="store_true", help="Leave out train_cost.py (about 15 minutes).")
    args = ap.parse_args(argv)
    # A local SQLite store: MLflow 3 refuses file:// tracking URIs ("file store is no longer supported").
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tempfile.mkdtemp()}/mlflow.db")

    from visalign import schema
    from visalign.models import load_model
    from visalign.recipes import AugmentParams, FilterParams, RolloutParams, SampleParams, TrainParams
    from visalign.stages import augment, rollout, sample, train
    from visalign.stages import filter as filt
    from visalign.toyworld.model import build_tiny_vlm

    out = Path(args.out).resolve()
    tmp = Path(tempfile.mkdtemp(prefix="visalign-bench-"))
    os.chdir(tmp)  # the SQLite store keeps artifacts in ./mlruns
    seeds = make_seeds(tmp / "seeds", args.prompts)
    model = build_tiny_vlm(tmp / "model", ["What colour is the circle?"] + COLOURS * 10)
    results: dict = {"machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                                 "cpus": os.cpu_count()}, "prompts": args.prompts}

    r = sample.run(sources=[str(seeds)], output_dir=str(tmp / "p"), params=SampleParams(num_prompts=args.prompts))
    results["sample_rows_per_s"] = round(r.rows_in / r.seconds, 1)
    for name in ("diffusion", "simclr"):
        r = augment.run(prompts_dir=str(tmp / "p"), output_dir=str(tmp / f"v-{name}"), params=AugmentParams(name=name))
        results[f"augment_{name}_views_per_s"] = round(r.rows_out / r.seconds, 1)

    loaded = load_model(str(model))
    prompts = schema.read_rows(tmp / "p" / schema.PROMPTS_FILE)
    reqs = [rollout.GenerationRequest(id=p.id, images=rollout.open_images(tmp / "p", p.images), question=p.question)
            for p in prompts]
    outs = {}
    for bs in (1, args.batch_size):
        engine = rollout.HFEngine(loaded.model, loaded.processor, batch_size=bs, max_new_tokens=8)
        engine.generate(reqs[:2])  # warm-up
        outs[bs], secs = timed(lambda e=engine: e.generate(reqs))
        results[f"rollout_batch{bs}_responses_per_s"] = round(len(reqs) / secs, 2)
    results["rollout_batched_speedup"] = round(results[f"rollout_batch{args.batch_size}_responses_per_s"]
                                               / results["rollout_batch1_responses_per_s"], 2)
    results["rollout_batched_equals_sequential"] = [o.text for o in outs[1]] == [o.text for o in outs[args.batch_size]]

    r = rollout.run(prompts_dir=str(tmp / "p"), views_dir=str(tmp / "v-diffusion"), model=str(model),
                    output_dir=str(tmp / "r"), params=RolloutParams(batch_size=args.batch_size, max_new_tokens=8))
    results["rollout_stage_responses_per_s"] = r.extra["responses_per_second"]
    r = filt.run(prompts_dir=str(tmp / "p"), responses_dir=str(tmp / "r"), output_dir=str(tmp / "pairs"),
                 params=FilterParams())
    results["pairs"] = r.rows_out
    if r.rows_out:
        r = train.run(pairs_dir=str(tmp / "pairs"), model=str(model), output_dir=str(tmp / "adapter"),
                      params=TrainParams(lora_r=16, lora_alpha=32, learning_rate=5e-4, per_device_batch_size=8,
                                         gradient_accumulation_steps=1, max_length=128, deepspeed=None,
                                         gradient_checkpointing=False, data_repeats=1))
        results["train_samples_per_s"] = r.extra["samples_per_second"]
        results["train_seconds"] = r.extra["train_seconds"]
    if not args.skip_train_cost:
        import train_cost

        results["train_cost"] = train_cost.run_all(tmp / "train-cost", 12)

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    if "train_cost" in results:
        (out / "train_cost.json").write_text(json.dumps(results["train_cost"], indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
