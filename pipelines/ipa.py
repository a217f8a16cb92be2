"""The IPA pipeline (METHODS.md section 4): progressive rounds of sample -> revise -> verify -> pair.

Rounds are real KFP steps: the pipeline unrolls IPA_MAX_ROUNDS (3) rounds, each its own
collect, pairs and train tasks, and nested `dsl.If(rounds >= r)` conditions decide at run time
how many of them run. Why this shape: the number of rounds must be a run parameter, KFP has no
data-dependent loop over steps that feed each other (ParallelFor is parallel), and nested
conditions run under kfp.local as on a cluster, with no GPU pod scheduled for a round that does
not run (always-present pass-through rounds would start one each). Each condition ends the run
with its own final train -> evaluate -> register on the pairs merged so far, so no output has to
be collected across branches (dsl.OneOf).

    round 1      collect(base) -> pairs
    rounds >= 2  train(pairs 1) -> evaluate -> collect(trained, pending of 1) -> pairs (merged 1..2)
    rounds >= 3  train(pairs 1..2) -> evaluate -> collect(trained, pending of 2, reference-guided) -> pairs
    last round   train(all pairs, from the base model) -> evaluate -> register
"""

from kfp import dsl
from visalign_pipelines import components as c
from visalign_pipelines.settings import apply


def _round(r: int, prompts, base_model: str, rounds, common: dict, policy=None, state=None):
    """One round's collect and pairs tasks; returns the pairs task (its output: the pairs so far)."""
    extra = {} if policy is None else {"policy": policy, "state": state}
    collect = apply(c.ipa_collect(prompts=prompts, base_model=base_model, round_index=r, rounds=rounds, **extra,
                                  **common).set_display_name(f"round {r}: sample + revise"))
    return apply(c.ipa_pairs(prompts=prompts, candidates=collect.outputs["candidates"], base_model=base_model,
                             round_index=r, rounds=rounds, **extra, **common)
                 .set_display_name(f"round {r}: verify + pairs"))


def _train_and_evaluate(pairs, base_model: str, benchmarks, experiment: str, common: dict, label: str):
    train = apply(c.train(pairs=pairs, model=base_model, experiment=experiment, **common)
                  .set_display_name(f"train {label}"))
    evaluate = apply(c.evaluate(benchmarks=benchmarks, base_model=base_model, aligned=train.outputs["adapter"],
                                **common).set_display_name(f"evaluate {label}"))
    return train, evaluate


def _finish(pairs, base_model: str, benchmarks, experiment: str, common: dict, rounds_done: int):
    train, evaluate = _train_and_evaluate(pairs, base_model, benchmarks, experiment, common,
                                          f"final ({rounds_done} round{'s' if rounds_done > 1 else ''})")
    apply(c.register(aligned=train.outputs["adapter"], results=evaluate.outputs["results"], **common)
          .set_display_name("register"))


@dsl.pipeline(name="ipa", description="IPA: progressive rounds of sampling, revision and verification, then DPO.")
def ipa(
    seeds: list[str],
    benchmarks: list[str],
    base_model: str,
    rounds: int = 3,
    profile: str = "paper",
    overrides: dict = {},  # noqa: B006 - KFP reads pipeline defaults from the signature
    experiment: str = "visalign-ipa",
):
    """Args:
        seeds: Seed file URIs with reference answers (LLaVA .json or VLMEvalKit .tsv).
        benchmarks: Benchmark TSV URIs, e.g. s3://visalign/benchmarks/pope.tsv.
        base_model: The policy to align: a Hugging Face model directory URI.
        rounds: Progressive collection rounds, 1 to 3 (IPA: 3); a value outside fails the first round.
        profile: paper (the papers' values) or toy (scaled down for the toyworld model).
        overrides: Recipe parameters to change, as {"stage.field": value}.
        experiment: MLflow experiment for the run.
    """
    common = dict(recipe="ipa", profile=profile, overrides=overrides)
    sample = apply(c.sample(sources=seeds, **common).set_display_name("sample"))
    prompts = sample.outputs["prompts"]
    r1 = _round(1, prompts, base_model, rounds, common)
    with dsl.If(rounds == 1, "one round"):
        _finish(r1.outputs["pairs"], base_model, benchmarks, experiment, common, 1)
    with dsl.If(rounds >= 2, "round 2"):
        t1, _ = _train_and_evaluate(r1.outputs["pairs"], base_model, benchmarks, experiment, common, "after round 1")
        r2 = _round(2, prompts, base_model, rounds, common, policy=t1.outputs["adapter"], state=r1.outputs["pairs"])
        with dsl.If(rounds == 2, "two rounds"):
            _finish(r2.outputs["pairs"], base_model, benchmarks, experiment, common, 2)
        with dsl.If(rounds >= 3, "round 3"):
            t2, _ = _train_and_evaluate(r2.outputs["pairs"], base_model, benchmarks, experiment, common,
                                        "after round 2")
            r3 = _round(3, prompts, base_model, rounds, common, policy=t2.outputs["adapter"],
                        state=r2.outputs["pairs"])
            _finish(r3.outputs["pairs"], base_model, benchmarks, experiment, common, 3)
