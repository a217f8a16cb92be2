"""The `visalign` command: one subcommand per stage plus the local stack, toyworld and the demo.

Each subcommand lives in its own module, which provides `configure_parser(parser)` and
`cli(args) -> int`; modules are imported only when their subcommand runs, so `visalign --help`
stays fast (torch is not imported for it).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import traceback

from visalign.errors import StageError
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
    parser.add_argument("--debug", action="store_true",
                        help="Show the traceback of an expected error (bad input, configuration, an outage) too.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = next((a for a in argv if not a.startswith("-")), None)  # the subcommand, after any --debug
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # also after the subcommand; SUPPRESS keeps an absent flag from resetting one given before it
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        if name == wanted:  # import only the module that will run
            importlib.import_module(module).configure_parser(p)
    return parser


# Stage arguments that name an input directory, and the one that names the output (local or s3://).
INPUT_DIRS = ("prompts", "views", "responses", "pairs", "state", "candidates")


def _run(module, args: argparse.Namespace) -> int:
    """The subcommand, with s3:// input directories synced to local copies and an s3:// --output
    staged locally and uploaded when it ends (visalign.infra.staging)."""
    uris = [name for name in (*INPUT_DIRS, "output") if "://" in str(getattr(args, name, None) or "")]
    if not uris:
        return int(module.cli(args) or 0)
    from visalign.infra import staging

    with contextlib.ExitStack() as stack:
        for name in uris:
            value = getattr(args, name)
            setattr(args, name, stack.enter_context(staging.staged_output(value)) if name == "output"
                    else staging.local_input(value))
        return int(module.cli(args) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    setup_logging()
    args = build_parser(argv).parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return _run(module, args)
    except (ConfigError, StageError) as e:  # expected: the message says what to do; anything else is a bug
        if args.debug:
            traceback.print_exc()
        print(f"visalign {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
