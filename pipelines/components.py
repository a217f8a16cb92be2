"""KFP components: thin adapters that load the recipe and call one stage's `run`.

Lightweight Python components (imports inside the body, base_image = our image, nothing
installed at run time) so that kfp.local's SubprocessRunner runs the very same pipeline on a
laptop. Each docstring's Args block is what the Kubeflow UI shows for the parameters.
"""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Model, Output
from visalign_pipelines.settings import image

component = dsl.component(base_image=image(), packages_to_install=[], install_kfp_package=False)


@component
def sample(sources: list[str], recipe: str, profile: str, overrides: dict, prompts: Output[Dataset]):
    """Pick image-question prompts from seed files.

    Args:
        sources: Seed file URIs: LLaVA-665k .json (images beside it) or VLMEvalKit .tsv, s3:// or local.
        recipe: Recipe name (seva, ...); its parameters are the papers' defaults.
        profile: paper (the papers' values) or toy (scaled down for the toyworld model).
        overrides: Recipe parameters to change, as {"stage.field": value}, e.g. {"sample.num_prompts": 1000}.
    """
    from visalign import recipes
    from visalign.stages import sample as stage

    r = recipes.load(recipe, profile, overrides)
    stage.run(sources=sources, output_dir=prompts.path, params=r.sample)


@component
def augment(prompts: Input[Dataset], recipe: str, profile: str, overrides: dict, views: Output[Dataset]):
    """Make an augmented view of every prompt's image (SeVa: diffusion noise).

    Args:
        prompts: The sample step's prompts.
        recipe: Recipe name.
        profile: paper or toy.
        overrides: Recipe parameters to change, e.g. {"augment.diffusion_step": 500}.
    """
    from visalign import recipes
    from visalign.stages import augment as stage

    r = recipes.load(recipe, profile, overrides)
    stage.run(prompts_dir=prompts.path, output_dir=views.path, params=r.augment)


@component
def rollout(prompts: Input[Dataset], views: Input[Dataset], model: str, recipe: str, profile: str,
            overrides: dict, responses: Output[Dataset]):
    """Answer every prompt greedily on its clean image and on its augmented view (GPU).

    Args:
        prompts: The sample step's prompts.
        views: The augment step's views.
        model: The policy: a Hugging Face model directory URI (s3://...).
        recipe: Recipe name.
        profile: paper or toy.
        overrides: Recipe parameters to change, e.g. {"rollout.batch_size": 16}.
    """
    from visalign import recipes
    from visalign.stages import rollout as stage

    r = recipes.load(recipe, profile, overrides)
    stage.run(prompts_dir=prompts.path, views_dir=views.path, model=model, output_dir=responses.path,
              params=r.rollout)


@component
def filter_pairs(prompts: Input[Dataset], responses: Input[Dataset], recipe: str, profile: str,
                 overrides: dict, pairs: Output[Dataset]):
    """Turn clean/augmented answers into preference pairs (TRL format).

    Args:
        prompts: The sample step's prompts.
        responses: The rollout step's responses.
        recipe: Recipe name.
        profile: paper or toy.
        overrides: Recipe parameters to change, e.g. {"filter.target_count": 8000}.
    """
    from visalign import recipes
    from visalign.stages import filter as stage

    r = recipes.load(recipe, profile, overrides)
    stage.run(prompts_dir=prompts.path, responses_dir=responses.path, output_dir=pairs.path, params=r.filter)


@component
def train(pairs: Input[Dataset], model: str, recipe: str, profile: str, overrides: dict, experiment: str,
          adapter: Output[Model]):
    """Preference-train the policy on the pairs (TRL DPO, LoRA, DeepSpeed) (GPU).

    Args:
        pairs: The filter step's pairs.
        model: The base model URI (s3://...); the adapter records it as its base.
        recipe: Recipe name.
        profile: paper or toy.
        overrides: Recipe parameters to change, e.g. {"train.deepspeed": "zero2"}; {"train.num_nodes": 4}
            trains on 4 GPU nodes as a Kubeflow Trainer TrainJob.
        experiment: MLflow experiment for the training run.
    """
    from visalign import recipes
    from visalign.infra import trainjob
    from visalign.stages import train as stage

    r = recipes.load(recipe, profile, overrides)
    if trainjob.wanted(r.train.num_nodes, trainjob.JobConfig.from_env()):  # several nodes: a Kubeflow TrainJob
        trainjob.run(pairs_uri=pairs.uri, model=model, output_dir=adapter.path, output_uri=adapter.uri, recipe=r,
                     profile=profile, overrides=overrides, experiment=experiment)
        return
    stage.run(pairs_dir=pairs.path, model=model, output_dir=adapter.path,
              params=trainjob.checkpoint_params(r.train, adapter.uri), recipe=r, experiment=experiment)


@component
def evaluate(benchmarks: list[str], base_model: str, aligned: Input[Model], recipe: str, profile: str,
             overrides: dict, results: Output[Dataset], metrics: Output[Metrics], comparison: Output[Markdown]):
    """Score the base and the aligned model on VLMEvalKit-TSV benchmarks.

    Args:
        benchmarks: Benchmark TSV URIs (or prefixes holding .tsv files), s3:// or local.
        base_model: The base model URI.
        aligned: The train step's model.
        recipe: Recipe name.
        profile: paper or toy.
        overrides: Recipe parameters to change, e.g. {"evaluate.limit": 100}; judge-scored benchmarks
            (MM-Vet, LLaVA-Bench) need {"evaluate.judge": "endpoint"} and the judge Secret.
    """
    import json
    import shutil
    from pathlib import Path

    from visalign import recipes, schema
    from visalign.stages import evaluate as stage

    r = recipes.load(recipe, profile, overrides)
    card = schema.read_model_card(aligned.path)
    stage.run(benchmarks=benchmarks, models={"base": base_model, "aligned": aligned.path}, output_dir=results.path,
              params=r.evaluate, mlflow_run_id=card.mlflow_run_id if card else None)
    shutil.copyfile(Path(results.path) / stage.COMPARISON_FILE, comparison.path)  # base vs aligned, in the UI
    scores = json.loads((Path(results.path) / schema.RESULTS_FILE).read_text())
    for model_name in ("base", "aligned"):
        for bench, values in scores.get(model_name, {}).items():
            for metric, value in values.items():
                if isinstance(value, (int, float)):
                    metrics.log_metric(f"{model_name}/{bench}/{metric}", float(value))


@component
def register(aligned: Input[Model], results: Input[Dataset], recipe: str, profile: str, overrides: dict,
             decision: Output[Dataset]) -> str:
    """Register the model in MLflow; alias it champion only if it beats the current one.

    Args:
        aligned: The train step's model.
        results: The evaluate step's results.
        recipe: Recipe name.
        profile: paper or toy.
        overrides: Recipe parameters to change, e.g. {"register.max_guard_drop": 0.02}.

    Returns:
        The alias given: champion or challenger.
    """
    from visalign import recipes
    from visalign.stages import register as stage

    r = recipes.load(recipe, profile, overrides)
    report = stage.run(model_dir=aligned.path, eval_dir=results.path, output_dir=decision.path, params=r.register,
                       tags={"recipe": recipe, "profile": profile})
    return report.extra["alias"]


# ---- ipa ----


@component
def ipa_collect(prompts: Input[Dataset], base_model: str, round_index: int, rounds: int, recipe: str, profile: str,
                overrides: dict, candidates: Output[Dataset], policy: Input[Model] = None,
                state: Input[Dataset] = None):
    """IPA round: answer the pending seeds on clean and perturbed images, then revise each answer (GPU).

    Args:
        prompts: The sample step's prompts (with reference answers).
        base_model: The base model URI; the round's policy when no trained policy is given (round 1).
        round_index: This round, 1-based.
        rounds: Rounds of the run (the pipeline parameter); the last one gets reference-guided feedback.
        recipe: Recipe name (ipa).
        profile: paper or toy.
        overrides: Recipe parameters to change, e.g. {"ipa.perturbations": "noise,blur"}.
        policy: The model trained after the previous round (rounds > 1).
        state: The previous round's pairs step output: which seeds are still without a pair.
    """
    from visalign import recipes
    from visalign.ipa import collect as stage

    if "ipa.rounds" in overrides and str(overrides["ipa.rounds"]) != str(rounds):
        raise recipes.ConfigError([f"overrides['ipa.rounds']={overrides['ipa.rounds']!r} disagrees with the pipeline "
                                   f"parameter rounds={rounds}; set the number of rounds with `rounds` only"])
    r = recipes.load(recipe, profile, {**overrides, "ipa.rounds": rounds})
    stage.run(prompts_dir=prompts.path, model=policy.path if policy is not None else base_model,
              output_dir=candidates.path, recipe=r, round_index=round_index,
              state_dir=state.path if state is not None else None)


@component
def ipa_pairs(prompts: Input[Dataset], candidates: Input[Dataset], base_model: str, round_index: int, rounds: int,
              recipe: str, profile: str, overrides: dict, pairs: Output[Dataset], metrics: Output[Metrics],
              policy: Input[Model] = None, state: Input[Dataset] = None):
    """IPA round: verify every candidate against its reference, pair verified with rejected answers.

    The output holds the pairs of this and all earlier rounds (deduplicated), the seeds still
    without a pair, every verdict and per-round statistics (rounds.json).

    Args:
        prompts: The sample step's prompts (with reference answers).
        candidates: This round's collect step output.
        base_model: The base model URI; the local verifier when no trained policy is given (round 1).
        round_index: This round, 1-based.
        rounds: Rounds of the run (the pipeline parameter).
        recipe: Recipe name (ipa).
        profile: paper or toy.
        overrides: Recipe parameters to change, e.g. {"verify.backend": "endpoint"} (URL, model and key then
            come from the verifier Secret).
        policy: The model trained after the previous round (rounds > 1).
        state: The previous round's pairs step output (rounds > 1).
    """
    from visalign import recipes
    from visalign.ipa import pairs as stage

    if "ipa.rounds" in overrides and str(overrides["ipa.rounds"]) != str(rounds):
        raise recipes.ConfigError([f"overrides['ipa.rounds']={overrides['ipa.rounds']!r} disagrees with the pipeline "
                                   f"parameter rounds={rounds}; set the number of rounds with `rounds` only"])
    r = recipes.load(recipe, profile, {**overrides, "ipa.rounds": rounds})
    model = policy.path if policy is not None else base_model
    report = stage.run(prompts_dir=prompts.path, candidates_dir=candidates.path, output_dir=pairs.path, recipe=r,
                       round_index=round_index, verifier=stage.build_verifier(r, model),
                       state_dir=state.path if state is not None else None)
    this_round = report.extra["rounds"][-1]
    for key in ("verified_rate", "new_pairs", "pairs_so_far", "pending_after"):
        metrics.log_metric(f"round{round_index}/{key}", float(this_round[key]))


# ---- mia-dpo ----


@component
def compose(prompts: Input[Dataset], recipe: str, profile: str, overrides: dict, composed: Output[Dataset]):
    """MIA-DPO: turn single-image prompts into multi-image prompts (sequence, grid collage, pic-in-pic).

    Args:
        prompts: The sample step's prompts (with reference answers).
        recipe: Recipe name (mia-dpo).
        profile: paper or toy.
        overrides: Recipe parameters to change, e.g. {"compose.mix": "1,1,1"} or {"compose.cell_size": 336}.
    """
    from visalign import recipes
    from visalign.mia_dpo import compose as stage

    r = recipes.load(recipe, profile, overrides)
    stage.run(prompts_dir=prompts.path, output_dir=composed.path, params=r.compose)


@component
def mia_rollout(prompts: Input[Dataset], model: str, recipe: str, profile: str, overrides: dict,
                responses: Output[Dataset]):
    """MIA-DPO: answer every multi-image prompt greedily, recording one decoder layer's attention to each image (GPU).

    Args:
        prompts: The compose step's multi-image prompts.
        model: The policy: a Hugging Face model directory URI (s3://...).
        recipe: Recipe name (mia-dpo).
        profile: paper or toy.
        overrides: Recipe parameters to change, e.g. {"rollout.attention_layer": 16}.
    """
    from visalign import recipes
    from visalign.stages import rollout as stage

    r = recipes.load(recipe, profile, overrides)
    stage.run(prompts_dir=prompts.path, model=model, output_dir=responses.path, params=r.rollout)


@component
def select_pairs(prompts: Input[Dataset], responses: Input[Dataset], recipe: str, profile: str, overrides: dict,
                 experiment: str, pairs: Output[Dataset], ratio_histogram: Output[HTML]):
    """MIA-DPO: keep responses that looked away from the target image as rejected; chosen = the reference.

    Args:
        prompts: The compose step's multi-image prompts.
        responses: The rollout step's responses (with attention).
        recipe: Recipe name (mia-dpo).
        profile: paper or toy.
        overrides: Recipe parameters to change, e.g. {"select.pip_threshold": 0.7}.
        experiment: MLflow experiment the ratio histogram and counts are logged to.

    Outputs:
        pairs: pairs.jsonl (chosen = the seed's reference answer, rejected = a response whose attention
            ratio to the target image fell below its format's threshold), the images the pairs use,
            the per-format ratios (ratios.json), the histogram image and report.json (drop reasons).
        ratio_histogram: An HTML page with the pairs kept per format and image count and one
            attention-ratio histogram per group, its threshold drawn as a dashed line.
    """
    import base64
    import html
    import json
    from pathlib import Path

    from visalign import recipes
    from visalign.mia_dpo import select as stage

    r = recipes.load(recipe, profile, overrides)
    report = stage.run(prompts_dir=prompts.path, responses_dir=responses.path, output_dir=pairs.path,
                       params=r.select, end_markers=r.filter.end_markers, experiment=experiment, recipe=r)
    png = base64.b64encode((Path(pairs.path) / stage.HISTOGRAM_FILE).read_bytes()).decode()
    table = html.escape(json.dumps(report.extra["pairs_per_format_and_images"]))
    Path(ratio_histogram.path).write_text(f"<p>pairs kept per format/images: {table}</p>"
                                          f"<img src='data:image/png;base64,{png}'/>")


# ---- mpo ----


@component
def mpo_rollout(prompts: Input[Dataset], model: str, recipe: str, profile: str, overrides: dict,
                responses: Output[Dataset]):
    """MPO: sample several chain-of-thought answers per prompt, seeded (GPU).

    Args:
        prompts: The sample step's prompts (with or without reference answers).
        model: The policy: a Hugging Face model directory URI (s3://...).
        recipe: Recipe name (mpo).
        profile: paper or toy.
        overrides: Recipe parameters to change, e.g. {"rollout.num_samples": 16, "rollout.temperature": 1.0}.
    """
    from visalign import recipes
    from visalign.stages import rollout as stage

    r = recipes.load(recipe, profile, overrides)
    stage.run(prompts_dir=prompts.path, model=model, output_dir=responses.path, params=r.rollout)


@component
def mpo_pairs(prompts: Input[Dataset], responses: Input[Dataset], model: str, recipe: str, profile: str,
              overrides: dict, pairs: Output[Dataset], metrics: Output[Metrics]):
    """MPO: correctness pairs for prompts with a reference answer, DropoutNTP pairs for the rest (GPU).

    Args:
        prompts: The sample step's prompts.
        responses: The rollout step's sampled answers.
        model: The policy that continues DropoutNTP's prefixes without the image (s3://...).
        recipe: Recipe name (mpo).
        profile: paper or toy.
        overrides: Recipe parameters to change, e.g. {"pairs.max_pairs_per_question": 15}.
    """
    from visalign import recipes
    from visalign.mpo import pairs as stage

    r = recipes.load(recipe, profile, overrides)
    report = stage.run(prompts_dir=prompts.path, responses_dir=responses.path, output_dir=pairs.path,
                       params=r.pairs, prompt_template=r.rollout.prompt_template, model=model)
    for key in ("correctness_pairs", "dropout_ntp_pairs", "pairs_per_question", "format_negative_rate"):
        metrics.log_metric(key, float(report.extra[key]))
    for key, value in report.extra["difficulty"].items():
        metrics.log_metric(f"questions_{key}", float(value))
