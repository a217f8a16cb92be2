"""The SeVa pipeline: self-generated negatives from augmented images (METHODS.md, section 1).

    sample -> augment -> rollout (GPU) -> filter -> train (GPU) -> evaluate -> register
"""

from kfp import dsl
from visalign_pipelines import components as c
from visalign_pipelines.settings import apply


@dsl.pipeline(name="seva", description="SeVa: DPO on the model's own answers to clean vs diffusion-noised images.")
def seva(
    seeds: list[str],
    benchmarks: list[str],
    base_model: str,
    profile: str = "paper",
    overrides: dict = {},  # noqa: B006 - KFP reads pipeline defaults from the signature
    experiment: str = "visalign-seva",
) -> str:
    """Args:
        seeds: Seed file URIs (LLaVA .json or VLMEvalKit .tsv), e.g. s3://visalign/seeds/llava.json.
        benchmarks: Benchmark TSV URIs, e.g. s3://visalign/benchmarks/pope.tsv.
        base_model: The policy to align: a Hugging Face model directory URI, e.g. s3://visalign/models/base.
        profile: paper (the papers' values) or toy (scaled down for the toyworld model).
        overrides: Recipe parameters to change, as {"stage.field": value}.
        experiment: MLflow experiment for the run.
    """
    recipe = "seva"
    common = dict(recipe=recipe, profile=profile, overrides=overrides)
    # apply(): GPU pool, Secrets, workspace, retries and caching per stage (pipelines/settings.py)
    sample = apply(c.sample(sources=seeds, **common).set_display_name("sample"))
    augment = apply(c.augment(prompts=sample.outputs["prompts"], **common).set_display_name("augment"))
    rollout = apply(c.rollout(prompts=sample.outputs["prompts"], views=augment.outputs["views"], model=base_model,
                              **common).set_display_name("rollout"))
    pairs = apply(c.filter_pairs(prompts=sample.outputs["prompts"], responses=rollout.outputs["responses"],
                                 **common).set_display_name("filter"))
    train = apply(c.train(pairs=pairs.outputs["pairs"], model=base_model, experiment=experiment,
                          **common).set_display_name("train"))
    evaluate = apply(c.evaluate(benchmarks=benchmarks, base_model=base_model, aligned=train.outputs["adapter"],
                                **common).set_display_name("evaluate"))
    register = apply(c.register(aligned=train.outputs["adapter"], results=evaluate.outputs["results"],
                                **common).set_display_name("register"))
    return register.outputs["Output"]
