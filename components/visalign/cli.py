"""The `visalign` command: one subcommand per stage plus the local stack, toyworld and the demo.

Each subcommand lives in its own module, which provides `configure_parser(parser)` and
`cli(args) -> int`; modules are imported only when their subcommand runs, so `visalign --help`
stays fast (torch is not imported for it).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from visalign.recipes import ConfigError
from visalign.report import setup_logging

COMMANDS: dict[str, tuple[str, str]] = {
    "sample": ("visalign.stages.sample", "Pick image-question prompts from seeds (LLaVA JSON or VLMEvalKit TSV)."),
    "augment": ("visalign.stages.augment", "Make an augmented view of every prompt's images."),
    "rollout": ("visalign.stages.rollout", "Generate answers on clean images and on augmented views."),
    "filter": ("visalign.stages.filter", "Turn responses into preference pairs (TRL format)."),
    "train": ("visalign.stages.train", "Preference-train the model (TRL DPO, LoRA, DeepSpeed)."),
    "evaluate": ("visalign.stages.evaluate", "Score base and aligned models on VLMEvalKit-TSV benchmarks."),
    "register": ("visalign.stages.register", "Register the model in MLflow and decide champion or challenger."),
    "ipa-collect": ("visalign.ipa.collect", "IPA round: sample on clean and perturbed images, then revise."),
    "ipa-pairs": ("visalign.ipa.pairs", "IPA round: verify candidates against references, build pairs."),
    "compose": ("visalign.mia_dpo.compose", "MIA-DPO: build multi-image prompts (sequence, grid, pic-in-pic)."),
    "select": ("visalign.mia_dpo.select", "MIA-DPO: attention-aware selection of rejected responses into pairs."),
    "mpo-pairs": ("visalign.mpo.pairs", "MPO: correctness pairs (with a reference) and DropoutNTP pairs (without)."),
    "stack": ("visalign.infra.stack", "Start, stop or inspect the local S3 + MLflow stack."),
    "toyworld": ("visalign.toyworld.cli", "Build the synthetic shapes world and the demo's base model."),
    "demo": ("visalign.demo", "Run a recipe end to end through kfp.local against the local stack."),
    "upload": ("visalign.infra.kfp_client", "Upload the compiled pipelines to Kubeflow Pipelines (idempotent)."),
    "submit": ("visalign.infra.kfp_client", "Start a recipe's run on Kubeflow Pipelines and print its URL."),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visalign", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = argv[0] if argv and argv[0] in COMMANDS else None
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:  # import only the module that will run
            importlib.import_module(module).configure_parser(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    setup_logging()
    args = build_parser(argv).parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.cli(args) or 0)
    except ConfigError as e:
        print(f"visalign {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
