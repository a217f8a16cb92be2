"""The MIA-DPO pipeline: multi-image prompts, attention-aware selection, DPO (METHODS.md section 2).

    sample -> compose -> mia-rollout (GPU, attention) -> select-pairs -> train (GPU) -> evaluate -> register
"""

from kfp import dsl
from visalign_pipelines import components as c
from visalign_pipelines.settings import apply


@dsl.pipeline(name="mia-dpo", description="MIA-DPO: DPO on multi-image prompts; rejected = answers whose attention "
                                          "left the target image, chosen = the reference answer.")
def mia_dpo(
    seeds: list[str],
    benchmarks: list[str],
    base_model: str,
    profile: str = "paper",
    overrides: dict = {},  # noqa: B006 - KFP reads pipeline defaults from the signature
    experiment: str = "visalign-mia-dpo",
) -> str:
    """Args:
        seeds: Seed file URIs with reference answers (LLaVA .json or VLMEvalKit .tsv), e.g. s3://visalign/seeds/llava.json.
        benchmarks: Benchmark TSV URIs, single- and multi-image (a JSON list of base64 images per row).
        base_model: The policy to align: a Hugging Face model directory URI, e.g. s3://visalign/models/base.
        profile: paper (the papers' values) or toy (scaled down for the toyworld model).
        overrides: Recipe parameters to change, as {"stage.field": value}.
        experiment: MLflow experiment for the run.
    """
    recipe = "mia-dpo"
    common = dict(recipe=recipe, profile=profile, overrides=overrides)
    # apply(): GPU pool, Secrets, workspace, retries and caching per stage (pipelines/settings.py)
    sample = apply(c.sample(sources=seeds, **common).set_display_name("sample"))
    compose = apply(c.compose(prompts=sample.outputs["prompts"], **common).set_display_name("compose"))
    rollout = apply(c.mia_rollout(prompts=compose.outputs["composed"], model=base_model,
                                  **common).set_display_name("rollout"))
    pairs = apply(c.select_pairs(prompts=compose.outputs["composed"], responses=rollout.outputs["responses"],
                                 experiment=experiment, **common).set_display_name("select"))
    train = apply(c.train(pairs=pairs.outputs["pairs"], model=base_model, experiment=experiment,
                          **common).set_display_name("train"))
    evaluate = apply(c.evaluate(benchmarks=benchmarks, base_model=base_model, aligned=train.outputs["adapter"],
                                **common).set_display_name("evaluate"))
    register = apply(c.register(aligned=train.outputs["adapter"], results=evaluate.outputs["results"],
                                **common).set_display_name("register"))
    return register.outputs["Output"]
