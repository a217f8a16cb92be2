"""`visalign toyworld build|model|probe`: the synthetic world, the demo's base model, and the
blank-image control that shows whether a model uses the image.

    visalign toyworld build --out world/ [--seed 0] [--num-train-images 2500 ...]
    visalign toyworld model --world world/ --out base_model/ [--steps N] [--untrained]
    visalign toyworld probe --model base_model/ --world world/ --out probe/ [--limit 300]
"""

from __future__ import annotations

import argparse
import inspect
import json

from visalign.toyworld import export, probe, sft

# Flags mirror the keyword defaults of the functions they call, so the help never disagrees
# with the Python API (the defaults live in one place: the signatures).
_BUILD = {p.name: p.default for p in inspect.signature(export.build_world).parameters.values()
          if p.kind is p.KEYWORD_ONLY}
# The training options with a scalar default (build_model / extra_examples are for the recipes' variants).
_SFT = {p.name: p.default for p in inspect.signature(sft.train_base_model).parameters.values()
        if p.kind is p.KEYWORD_ONLY and isinstance(p.default, (int, float))}

_PROBE = {p.name: p.default for p in inspect.signature(probe.probe).parameters.values()
          if p.kind is p.KEYWORD_ONLY}

_BUILD_HELP = {
    "seed": "Seed of the whole world; the same seed gives byte-identical files.",
    "num_seed_images": "Images of the pipeline's seed prompts (3 questions each).",
    "num_train_images": "Images of the base model's SFT data (about 6 questions each).",
    "num_bench_images": "Held-out images of the guard benchmarks toy_mc, toy_short, toy_multi_grid, toy_mmvet "
                        "(the first of the held-out pool; about 2 rows each per benchmark).",
    "num_heldout_images": "Held-out benchmark image pool, all distinct and never a seed or train image: toy_pope "
                          "and toy_steps ask 2 questions about each, toy_multi_seq draws its images from it.",
    "num_multi_seq_rows": "Rows of toy_multi_seq (2-4 pool images each; MIA-DPO's target benchmark).",
    "num_multi_grid_rows": "Rows of toy_multi_grid (a 2x2 collage of guard images each).",
    "image_size": "Side of the square images in pixels (the tiny model uses 64).",
}
_SFT_HELP = {
    "seed": "Seed of the model's initialisation and of the data order.",
    "batch_size": "Examples per step.",
    "lr": "AdamW peak learning rate (warmup, then cosine).",
    "warmup_ratio": "Fraction of the steps spent warming up.",
    "threads": "torch CPU threads.",
    "log_every": "Log the mean loss every this many steps.",
}

_PROBE_HELP = {
    "limit": "Rows per benchmark (the first N).",
    "batch_size": "Questions per generate() call.",
}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="toyworld_command", metavar="ACTION", required=True)
    build = sub.add_parser("build", help="Write seeds, SFT data and benchmarks of the shapes world.",
                           description=export.__doc__.splitlines()[0])
    build.add_argument("--out", required=True, help="Directory to write the world into.")
    for name, default in _BUILD.items():
        build.add_argument(f"--{name.replace('_', '-')}", type=int, default=default,
                           help=f"{_BUILD_HELP[name]} Default: {default}.")
    model = sub.add_parser("model", help="Build the tiny VLM and fine-tune it on the world (the base model).",
                           description=sft.__doc__.splitlines()[0])
    model.add_argument("--world", required=True, help="A directory written by `visalign toyworld build`.")
    model.add_argument("--out", required=True, help="Directory for the Hugging Face model directory.")
    model.add_argument("--steps", type=int, default=sft.DEFAULT_BASE_STEPS,
                       help=f"SFT steps (a fixed count, not a time budget). Default: {sft.DEFAULT_BASE_STEPS}.")
    model.add_argument("--untrained", action="store_true",
                       help="Save the randomly initialised model without training (fast; for tests).")
    for name, default in _SFT.items():
        model.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default,
                           help=f"{_SFT_HELP[name]} Default: {default}.")
    check = sub.add_parser("probe", help="Score a model on the world's benchmarks with real vs blank images.",
                           description=probe.__doc__.splitlines()[0])
    check.add_argument("--model", required=True, help="A model directory (e.g. from `visalign toyworld model`).")
    check.add_argument("--world", required=True, help="A directory written by `visalign toyworld build`.")
    check.add_argument("--out", required=True, help=f"Directory for {probe.PROBE_FILE} and {probe.TABLE_FILE}.")
    for name, default in _PROBE.items():
        check.add_argument(f"--{name.replace('_', '-')}", type=int, default=default,
                           help=f"{_PROBE_HELP[name]} Default: {default}.")


def cli(args: argparse.Namespace) -> int:
    if args.toyworld_command == "build":
        result = export.build_world(args.out, **{k: getattr(args, k) for k in _BUILD})
        print(json.dumps(result, indent=2))
        return 0
    if args.toyworld_command == "probe":
        result = probe.probe(args.model, args.world, **{k: getattr(args, k) for k in _PROBE})
        out = probe.write(result, args.out)
        print(probe.table(result), end="")
        print(out)
        return 0
    if args.untrained:
        out = sft.build_untrained_model(args.world, args.out, seed=args.seed)
    else:
        out = sft.train_base_model(args.world, args.out, steps=args.steps, **{k: getattr(args, k) for k in _SFT})
    print(out)
    return 0
