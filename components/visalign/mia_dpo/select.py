"""Select (MIA-DPO): keep the responses where the model looked away from the target image.

For each composed prompt's greedy response (rollout with capture_attention), the attention ratio
of its format (visalign.mia_dpo.attention) is compared with the threshold for its format and image count.
A response becomes the REJECTED side of a pair when, in this order (each failure is a drop reason):

    attended_target     ratio >= threshold (the model looked at the target: not a hallucination)
    low_perplexity      perplexity <= min_perplexity (a confident answer)
    empty               the response or the reference is empty
    long_reference      reference >= max_reference_chars
    matches_reference   the response says what the reference says
    length_ratio        post-selection: longer side > max_length_ratio x the shorter
    edit_distance       post-selection: more than max_edit_distance character edits apart

Chosen = the seed's reference answer. The report gives the ratio distribution per format and image
count (all responses, kept or not) and a histogram image, also logged to MLflow (with the resolved
recipe) when a tracking server is configured. A retried step logs to the run its first attempt
opened: the run is found by a tag derived from the output directory and the configuration.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visalign import schema
from visalign.inputs import output_path
from visalign.mia_dpo import attention
from visalign.recipes import GRID_THRESHOLD_IMAGES, SEQUENCE_THRESHOLD_IMAGES, FilterParams, SelectParams
from visalign.report import StageReport
from visalign.schema import Pair, Prompt, Response
from visalign.stages.filter import clean_text

if TYPE_CHECKING:
    from visalign.recipes import Recipe

log = logging.getLogger(__name__)
HISTOGRAM_FILE = "ratio_histogram.png"
RATIOS_FILE = "ratios.json"


def threshold(fmt: str, num_images: int, params: SelectParams) -> float:
    """The ratio threshold of a format and image count (METHODS.md's table, from the recipe)."""
    if fmt == "pic_in_pic":
        return params.pip_threshold
    table = {"sequence": dict(zip(SEQUENCE_THRESHOLD_IMAGES, params.sequence_thresholds, strict=True)),
             "grid": dict(zip(GRID_THRESHOLD_IMAGES, params.grid_thresholds, strict=True))}.get(fmt)
    if table is None:
        raise ValueError(f"format {fmt!r}: unknown; choose sequence, grid or pic_in_pic")
    if num_images not in table:
        raise ValueError(f"{fmt} with {num_images} images: no threshold; the table covers {sorted(table)}")
    return table[num_images]


def attention_ratio(prompt: Prompt, capture: dict[str, Any]) -> float:
    """The ratio of the prompt's format from a response's captured attention (ValueError if unusable)."""
    att = capture.get("attention") or {}
    images, grids, meta = att.get("images"), att.get("grids") or [], prompt.meta
    if not att:
        raise ValueError("no attention captured (run rollout with rollout.capture_attention=true)")
    if not images:
        raise ValueError(f"no generated row to read attention from ({att.get('rows', 0)} rows: the response ended "
                         "at its first token)")
    fmt = meta.get("format")
    if fmt == "sequence":
        return attention.sequence_ratio(images, int(meta["target"]))
    if not grids or grids[0] is None:
        raise ValueError(f"{att.get('layout') or 'this processor'}: the image's tokens form no token map whose geometry "
                         "is known (tiles or anyres crops in an arrangement the processor does not report), so grid "
                         "and pic-in-pic cells cannot be mapped to tokens; compose sequence prompts only "
                         "(compose.formats and compose.mix) for this model family")
    order = (att.get("grid_order") or [None])[0]
    on_map = [images[0][k] for k in order] if order is not None else images[0]  # tiles joined into one map
    if fmt == "grid":
        return attention.grid_ratio(on_map, grids[0], meta["canvas"], meta["cells"], int(meta["target"]))
    if fmt == "pic_in_pic":
        return attention.region_ratio(on_map, grids[0], meta["canvas"], meta["centre_box"])
    raise ValueError(f"prompt meta 'format'={fmt!r}: not a composed prompt (run the compose stage first)")


def levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        cur = [i]
        for j, cb in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _same_answer(a: str, b: str) -> bool:
    norm = [" ".join(x.lower().strip().rstrip(".").split()) for x in (a, b)]
    return norm[0] == norm[1]


def judge(prompt: Prompt, response: Response, ratio: float, params: SelectParams,
          end_markers: tuple[str, ...]) -> tuple[str | None, str, str]:
    """(drop reason or None, chosen, rejected) for one scored response, rules in the module's order."""
    meta = prompt.meta
    chosen, rejected = (prompt.reference or "").strip(), clean_text(response.text, end_markers)
    if ratio >= threshold(meta["format"], int(meta["num_images"]), params):
        return "attended_target", chosen, rejected
    ppl = response.meta.get("perplexity")
    if ppl is None or ppl <= params.min_perplexity:
        return "low_perplexity", chosen, rejected
    if not chosen or not rejected:
        return "empty", chosen, rejected
    if len(chosen) >= params.max_reference_chars:
        return "long_reference", chosen, rejected
    if _same_answer(chosen, rejected):
        return "matches_reference", chosen, rejected
    if params.max_length_ratio is not None and \
            max(len(chosen), len(rejected)) > params.max_length_ratio * min(len(chosen), len(rejected)):
        return "length_ratio", chosen, rejected
    if params.max_edit_distance is not None and levenshtein(chosen, rejected) > params.max_edit_distance:
        return "edit_distance", chosen, rejected
    return None, chosen, rejected


def distribution(ratios: list[float], bins: int) -> dict[str, Any]:
    if not ratios:
        return {"n": 0}
    s = sorted(ratios)
    counts = [0] * bins
    for r in s:
        counts[min(int(r * bins), bins - 1)] += 1
    return {"n": len(s), "mean": round(sum(s) / len(s), 4), "min": round(s[0], 4), "max": round(s[-1], 4),
            "quartiles": [round(s[int(q * (len(s) - 1))], 4) for q in (0.25, 0.5, 0.75)], "histogram": counts}


def plot_histograms(groups: dict[str, list[float]], thresholds: dict[str, float], bins: int, path: Path) -> None:
    """One small histogram per format/image-count group, its threshold drawn as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(groups) or ["(none)"]
    cols = min(4, len(keys))
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        ax.hist(groups.get(key, []), bins=bins, range=(0, 1), color="#4878a8")
        if key in thresholds:
            ax.axvline(thresholds[key], color="#c03030", linestyle="--")
        ax.set_title(f"{key} (n={len(groups.get(key, []))})", fontsize=9)
        ax.set_xlim(0, 1)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle("attention ratio to the target (dashed: threshold; below it = rejected candidate)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run(*, prompts_dir: str, responses_dir: str, output_dir: str, params: SelectParams,
        end_markers: tuple[str, ...] = FilterParams().end_markers, histogram_path: str | None = None,
        mlflow_run_id: str | None = None, experiment: str = "visalign", recipe: Recipe | None = None) -> StageReport:
    """Pairs (chosen = reference, rejected = a response that looked away) from composed prompts.

    `recipe` (the resolved one, when the caller has it) is logged to MLflow; else only `params`."""
    if mlflow_run_id or os.environ.get("MLFLOW_TRACKING_URI"):
        from visalign.infra import tracking

        tracking.check_reachable()  # in seconds, before the work (MLflow's client retries ~250 s)
    report = StageReport("select")
    out = output_path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompts = {p.id: p for p in schema.read_rows(Path(prompts_dir) / schema.PROMPTS_FILE)}
    responses = schema.read_rows(Path(responses_dir) / schema.RESPONSES_FILE)
    report.rows_in = len(responses)
    groups: dict[str, list[float]] = defaultdict(list)
    thresholds: dict[str, float] = {}
    kept: Counter[str] = Counter()
    pairs = []
    for r in responses:
        prompt = prompts.get(r.prompt_id)
        if prompt is None:
            report.drop("unknown_prompt", f"{responses_dir}: prompt_id {r.prompt_id} not in {prompts_dir}")
            continue
        try:
            ratio = attention_ratio(prompt, r.meta)
            key = f"{prompt.meta['format']}/{prompt.meta['num_images']}"
            thresholds[key] = threshold(prompt.meta["format"], int(prompt.meta["num_images"]), params)
        except attention.CanvasMismatch as e:  # a composition setting, not one response: stop the stage
            raise attention.CanvasMismatch(f"response {r.id} (prompt {r.prompt_id}): {e}") from None
        except (ValueError, KeyError, TypeError) as e:
            report.drop("no_attention", f"response {r.id} (prompt {r.prompt_id}): {e}")
            continue
        groups[key].append(ratio)
        reason, chosen, rejected = judge(prompt, r, ratio, params, end_markers)
        if reason:
            report.drop(reason, f"response {r.id} (prompt {prompt.id}, {key}): ratio {ratio:.3f}, "
                                f"perplexity {r.meta.get('perplexity')}, {rejected[:40]!r} vs {chosen[:40]!r}")
            continue
        kept[key] += 1
        pairs.append(Pair(id=schema.stable_id(prompt.id, chosen, rejected), images=prompt.images,
                          prompt=prompt.question, chosen=chosen, rejected=rejected, prompt_id=prompt.id,
                          provenance={"source": prompt.source, "source_row": prompt.source_row,
                                      "rejected_response": r.id, "format": prompt.meta["format"],
                                      "num_images": prompt.meta["num_images"], "target": prompt.meta["target"],
                                      "attention_ratio": round(ratio, 6),
                                      "perplexity": r.meta.get("perplexity"),
                                      "attention_layer": (r.meta.get("attention") or {}).get("layer")}))
    for p in pairs:
        for rel in p.images:
            if not (out / rel).exists():
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(Path(prompts_dir) / rel, out / rel)
    report.rows_out = schema.write_rows(out / schema.PAIRS_FILE, pairs)
    dist = {k: {**distribution(v, params.histogram_bins), "threshold": thresholds[k], "kept": kept[k]}
            for k, v in sorted(groups.items())}
    (out / RATIOS_FILE).write_text(json.dumps({k: sorted(v) for k, v in groups.items()}))
    plot_histograms(groups, thresholds, params.histogram_bins, out / HISTOGRAM_FILE)
    if histogram_path:
        Path(histogram_path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / HISTOGRAM_FILE, histogram_path)
    if not pairs:
        log.warning("select: no pair kept out of %d responses; see the drop reasons in the report", len(responses))
    report.extra.update(pairs_per_format_and_images=dict(sorted(kept.items())), ratios=dist,
                        pairs_per_format=dict(Counter(p.provenance["format"] for p in pairs)))
    if mlflow_run_id or os.environ.get("MLFLOW_TRACKING_URI"):
        config = {"recipe": recipe.to_dict()} if recipe else \
            {"select": dataclasses.asdict(params), "filter": {"end_markers": end_markers}}
        report.extra["mlflow_run_id"] = _log_to_mlflow(report, out, mlflow_run_id, experiment, config)
    report.write(out)
    return report


def _log_to_mlflow(report: StageReport, out: Path, run_id: str | None, experiment: str,
                   config: dict[str, Any]) -> str:
    import mlflow

    from visalign.infra import tracking

    # A KFP retry reruns the step with the same output path: its key finds the first attempt's run.
    # The configuration is in the key too, so a rerun with other settings gets a run of its own
    # (MLflow refuses to change a logged parameter's value).
    step = schema.stable_id("select", str(out.resolve()), config)
    with tracking.start_run(experiment, run_name="select", run_id=run_id, step_key=step) as active:
        tracking.log_params_flat(config)
        metrics = {"select/pairs": float(report.rows_out)}
        for key, d in report.extra["ratios"].items():
            name = key.replace("/", "_")
            metrics[f"select/kept/{name}"] = float(d["kept"])
            if d.get("n"):
                metrics[f"select/ratio_mean/{name}"] = float(d["mean"])
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(out / HISTOGRAM_FILE), artifact_path="select")
        mlflow.log_artifact(str(out / RATIOS_FILE), artifact_path="select")
        return active.info.run_id


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from visalign import recipes

    parser.add_argument("--prompts", required=True, help="Directory with the composed prompts.jsonl (compose's output).")
    parser.add_argument("--responses", required=True, help="Directory with responses.jsonl (rollout with attention).")
    parser.add_argument("--output", required=True, help="Output directory for pairs.jsonl, images/, the histogram.")
    recipes.add_arguments(parser, "select")


def cli(args: argparse.Namespace) -> int:
    from visalign import recipes

    recipe = recipes.recipe_from_args(args, "select")
    run(prompts_dir=args.prompts, responses_dir=args.responses, output_dir=args.output, params=recipe.select,
        end_markers=recipe.filter.end_markers, experiment=f"visalign-{recipe.name}", recipe=recipe)
    return 0
