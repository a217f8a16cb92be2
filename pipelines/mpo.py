"""The MPO pipeline: mixed preference optimisation on MMPR-style pairs (METHODS.md section 3).

    sample -> mpo-rollout (GPU, N chain-of-thought samples) -> mpo-pairs (GPU: correctness pairs for
    seeds with a reference, DropoutNTP for seeds without) -> train (GPU, DPO + BCO-pair + SFT)
    -> evaluate -> register
"""

from kfp import dsl
from visalign_pipelines import components as c
from visalign_pipelines.settings import apply


@dsl.pipeline(name="mpo", description="MPO: DPO + BCO-pair (reward shift) + SFT on correctness-based and "
                                      "DropoutNTP pairs from the model's own chain-of-thought samples.")
def mpo(
    seeds: list[str],
    benchmarks: list[str],
    base_model: str,
    profile: str = "paper",
    overrides: dict = {},  # noqa: B006 - KFP reads pipeline defaults from the signature
    experiment: str = "visalign-mpo",
) -> str:
    """Args:
        seeds: Seed file URIs (LLaVA .json or VLMEvalKit .tsv); rows with a reference answer get correctness
            pairs, rows without one DropoutNTP pairs. E.g. s3://visalign/seeds/mmpr.json.
        benchmarks: Benchmark TSV URIs, e.g. s3://visalign/benchmarks/mathvista.tsv.
        base_model: The policy to align: a Hugging Face model directory URI, e.g. s3://visalign/models/base.
        profile: paper (the papers' values) or toy (scaled down for the toyworld model).
        overrides: Recipe parameters to change, as {"stage.field": value}.
        experiment: MLflow experiment for the run.
    """
    recipe = "mpo"
    common = dict(recipe=recipe, profile=profile, overrides=overrides)
    # apply(): GPU pool, Secrets, workspace, retries and caching per stage (pipelines/settings.py)
    sample = apply(c.sample(sources=seeds, **common).set_display_name("sample"))
    rollout = apply(c.mpo_rollout(prompts=sample.outputs["prompts"], model=base_model,
                                  **common).set_display_name("rollout"))
    pairs = apply(c.mpo_pairs(prompts=sample.outputs["prompts"], responses=rollout.outputs["responses"],
                              model=base_model, **common).set_display_name("pairs"))
    train = apply(c.train(pairs=pairs.outputs["pairs"], model=base_model, experiment=experiment,
                          **common).set_display_name("train"))
    evaluate = apply(c.evaluate(benchmarks=benchmarks, base_model=base_model, aligned=train.outputs["adapter"],
                                **common).set_display_name("evaluate"))
    register = apply(c.register(aligned=train.outputs["adapter"], results=evaluate.outputs["results"],
                                **common).set_display_name("register"))
    return register.outputs["Output"]
