"""The stage parameter dataclasses, with the papers' defaults: the one home of every parameter.

A recipe is a frozen dataclass of per-stage parameter dataclasses. CLI flags and pipeline
parameters are derived from these fields (recipes/loading.py); the help text is written once, in
each field's metadata. Each paper's own values (paper and toy profiles) and rules sit in its
profile module next to this one (seva.py, mia_dpo.py, mpo.py, ipa.py).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."


class ConfigError(ValueError):
    """Every problem of a configuration at once, each naming the field, value, rule and fix."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(problems))


def _p(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict, tuple)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class SampleParams:
    num_prompts: int = _p(8000, "Prompts to pick (SeVa: 8k per source). Seeded; all when the input has fewer.")
    max_questions_per_image: int = _p(2, "At most this many questions per image (SeVa: 2).")
    strip_suffixes: tuple[str, ...] = _p(
        (SHORT_ANSWER_SUFFIX,), "Suffixes removed from questions (SeVa strips LLaVA's short-answer suffix)."
    )
    seed: int = _p(0, "Random seed for picking.")
    images_outside_root: bool = _p(False, "Allow LLaVA rows whose image path leads outside the image root (../, "
                                   "absolute paths, other URIs); off, such rows are dropped and counted.")


@dataclass(frozen=True)
class AugmentParams:
    name: str = _p("diffusion", "Augmentation: diffusion (SeVa), flip, random_resized_crop, autoaugment, "
                   "mocov2, simclr, byol. See visalign.stages.augment.AUGMENTATIONS.")
    diffusion_step: int = _p(800, "Diffusion noise step t in [0, T): 500 is SeVa's 'weak', 800 its 'strong'.")
    diffusion_timesteps: int = _p(1000, "T of the sigmoid beta schedule (SeVa: 1000).")
    beta_start: float = _p(1e-5, "First beta of the sigmoid schedule (SeVa: 1e-5).")
    beta_end: float = _p(5e-3, "Last beta of the sigmoid schedule (SeVa: 5e-3).")
    seed: int = _p(0, "Base seed; each prompt's view gets a seed derived from it and the prompt id.")


@dataclass(frozen=True)
class RolloutParams:
    engine: str = _p("hf", "Generation engine: hf (transformers generate, batched, left padding).")
    batch_size: int = _p(8, "Prompts per generate() call. Larger is faster until memory runs out.")
    max_new_tokens: int = _p(512, "Longest answer in tokens (SeVa and MIA-DPO: 512).")
    dtype: str = _p("auto", "Model dtype: auto (bf16 on GPU, fp32 on CPU), bfloat16, float16, float32.")
    checkpoint_every: int = _p(64, "Append finished responses to disk every this many prompts (resumable).")
    resume_mismatch: str = _p("refuse", "When the output holds responses made with another model, other prompts or "
                              "other parameters: refuse (fail, naming what changed) or restart (discard them).")
    capture_attention: bool = _p(False, "Record, per response, one decoder layer's attention from the generated "
                                 "tokens to each image and the per-token max-softmax (MIA-DPO's selection needs it).")
    attention_layer: int | None = _p(None, "Decoder layer (0-based) whose attention is recorded; None = the middle "
                                     "one (MIA-DPO: 16 of LLaVA-1.5-7B's 32).")
    # ---- sampling mode (MPO; IPA builds on it). Defaults keep SeVa's one greedy answer. ----
    num_samples: int = _p(1, "Responses per prompt (and view); sample_index 0..N-1. MPO's correctness pairs: 32. "
                          "More than 1 needs do_sample.")
    samples_without_reference: int = _p(1, "Responses per prompt that has no reference answer (num_samples is for "
                                        "those with one). MPO: 1, DropoutNTP uses one answer per such prompt; more "
                                        "than 1 needs do_sample.")
    do_sample: bool = _p(False, "Sample instead of greedy decoding (MPO: true, with temperature/top_k below).")
    temperature: float = _p(0.7, "Sampling temperature, > 0 (MPO: 0.7). Used only with do_sample.")
    top_k: int = _p(50, "Sample from the k most likely tokens; 0 = no limit (MPO: 50). Used only with do_sample.")
    top_p: float = _p(1.0, "Nucleus sampling mass in (0, 1]; 1 = off. Used only with do_sample.")
    seed: int = _p(0, "Sampling seed: the same seed, prompts and batch size give the same samples.")
    prompt_template: str = _p("plain", "How the question is put to the model: plain (as is) or cot (asks for step-by-"
                              "step reasoning ending in 'Final answer: ...', MPO's correctness pairs); see "
                              "visalign.recipes.registry.PROMPT_TEMPLATES.")
    with_image: bool = _p(True, "Show the prompt's images. False answers from the text alone (MPO's DropoutNTP "
                          "continuation).")


@dataclass(frozen=True)
class FilterParams:
    end_markers: tuple[str, ...] = _p(
        ("</s>", "<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<end_of_utterance>"),
        "End-of-sequence markers stripped from answers after the equality check (SeVa).",
    )
    target_count: int | None = _p(None, "Down-sample the pairs to this many (seeded); None keeps all.")
    seed: int = _p(0, "Random seed for down-sampling.")


@dataclass(frozen=True)
class TrainParams:
    loss_type: tuple[str, ...] = _p(("sigmoid",), "TRL DPO loss type(s) (SeVa: sigmoid); several are summed with loss_weights.")
    loss_weights: tuple[float, ...] | None = _p(None, "Weights of the loss types (MPO: 0.8,0.2,1.0); None = all 1.")
    bco_delta: bool = _p(True, "bco_pair with MPO's reward shift delta (the running mean of all rewards; "
                         "visalign.stages.mpo_loss). False: TRL's bco_pair as is, without the shift.")
    beta: float = _p(0.1, "DPO beta (SeVa: 0.1).")
    lora_r: int = _p(1024, "LoRA rank (SeVa: 1024). 0 trains all parameters.")
    lora_alpha: int = _p(2048, "LoRA alpha (SeVa: 2048).")
    lora_dropout: float = _p(0.05, "LoRA dropout (SeVa: 0.05).")
    learning_rate: float = _p(2e-6, "Peak learning rate (SeVa: 2e-6).")
    lr_scheduler: str = _p("cosine", "Learning-rate schedule (SeVa: cosine).")
    weight_decay: float = _p(0.0, "AdamW weight decay (SeVa: 0, transformers' default; MPO: 0.05).")
    warmup_ratio: float = _p(0.03, "Warm-up fraction of the steps (SeVa: 0.03).")
    num_epochs: float = _p(1.0, "Epochs over the (repeated) pairs.")
    data_repeats: int = _p(2, "Times the pairs are repeated per epoch (SeVa's reference code feeds them twice).")
    per_device_batch_size: int = _p(1, "Pairs per device per step.")
    gradient_accumulation_steps: int = _p(8, "Steps accumulated before an optimiser update.")
    max_length: int = _p(2048, "Longest prompt+answer in tokens; must cover the image tokens.")
    deepspeed: str | None = _p("zero3", "DeepSpeed config shipped in the package: zero2, zero3, or None for plain DDP/CPU.")
    precision: str = _p("auto", "auto (bf16 on GPU, fp32 on CPU), bf16, fp32.")
    gradient_checkpointing: bool = _p(True, "Recompute activations to save memory (TRL's default on).")
    precompute_reference: str = _p("auto", "The reference model's log-probs computed once per unique pair before "
                                   "training and read from the batch (stages.reference), instead of a reference "
                                   "forward on every step: on, off, or auto = on where it saves work (data_repeats or "
                                   "num_epochs > 1, or full parameters, where no reference copy is loaded at all).")
    reference_batch_size: int = _p(8, "Pairs per batch of the reference pass (no grad, so larger than training's).")
    merge: bool = _p(False, "Also save the adapter merged into the base model.")
    logging_steps: int = _p(1, "Log the loss every this many steps.")
    save_steps: int = _p(200, "Save a resumable checkpoint every this many optimiser steps.")
    checkpoint_dir: str | None = _p(None, "Checkpoint directory (a workspace volume on a cluster); a re-run with the "
                                    "same one resumes from its last checkpoint. None: inside the output, removed after.")
    resume_mismatch: str = _p("refuse", "When the checkpoints were made with another base model, other pairs or other "
                              "parameters: refuse (fail, naming what changed) or restart (discard them).")
    seed: int = _p(0, "Training seed.")
    num_nodes: int = _p(1, "Nodes to train on. 1: every GPU of the train step's pod. >1: the step submits a Kubeflow "
                        "Trainer TrainJob (torch-distributed runtime, DeepSpeed) of this many nodes, each with the GPU "
                        "pool's GPUs, sharded by train.deepspeed (plain DDP when None); needs Kubeflow Trainer and an "
                        "s3:// pipeline root.")


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int = _p(16, "Questions per generate() call.")
    max_new_tokens: int = _p(16, "Answer length for benchmark questions (short answers).")
    limit: int | None = _p(None, "Evaluate only the first N rows of each benchmark (for smoke runs).")
    open_max_new_tokens: int = _p(512, "Answer length for judge-scored, open-ended benchmarks (MM-Vet, LLaVA-Bench).")
    judge: str = _p("none", "none, or endpoint: an OpenAI-compatible chat endpoint from VISALIGN_JUDGE_URL/_MODEL/"
                    "_API_KEY (a Secret) grades MM-Vet and LLaVA-Bench (VLMEvalKit's prompts) and, with "
                    "judge_extraction, reads answers the rules cannot. Judge-scored benchmarks need it.")
    judge_extraction: bool = _p(False, "Ask the judge for multiple-choice and yes/no answers VLMEvalKit's rules "
                                "cannot read (its LLM answer extraction); counted apart as judge_extracted.")
    judge_cache: str | None = _p(None, "JSON-lines file of judge answers, reused across runs (a re-run pays only for "
                                 "new prompts); None: judge_cache.jsonl in the output.")
    judge_max_tokens: int = _p(2048, "Longest judge answer in tokens (VLMEvalKit's MM-Vet judge: 2048).")
    judge_concurrency: int = _p(4, "Judge requests in flight at most.")
    judge_timeout_s: float = _p(120.0, "Judge: seconds before a request times out.")
    judge_retries: int = _p(4, "Judge: retries after a timeout, connection error, 429 or 5xx (exponential backoff).")
    circular: str = _p("auto", "MMBench's CircularEval: a question is right only when every rotation of its options "
                       "is (rows grouped by index mod 1e6). auto: for benchmarks named like VLMEvalKit's circular ones "
                       "(mmbench, ccbench, circular, mmcr); on; off.")
    significance_samples: int = _p(1000, "Paired comparison of each model with the base on the same rows: bootstrap "
                                   "draws of the difference's interval and permutations of its p-value (McNemar's "
                                   "exact test for accuracies). 0: off (register.require_significance needs it).")
    confidence: float = _p(0.95, "Confidence level of the paired bootstrap interval.")
    significance_seed: int = _p(0, "Seed of the bootstrap and permutation draws (same predictions, same interval).")


@dataclass(frozen=True)
class RegisterParams:
    model_name: str = _p("visalign-seva", "Registered model name in MLflow.")
    target_metric: str = _p("pope/f1", "Metric that must improve for promotion: '<benchmark>/<metric>'.")
    guard_metrics: tuple[str, ...] = _p((), "Metrics that must not drop by more than max_guard_drop.")
    max_guard_drop: float = _p(0.01, "Largest allowed drop (absolute) of a guard metric.")
    min_improvement: float = _p(0.0, "Target metric must beat the champion by more than this.")
    require_significance: bool = _p(True, "Promote only on a difference beyond chance: the target's paired interval "
                                    "(evaluate's, aligned vs base) must lie above min_improvement, and no guard's "
                                    "interval may lie wholly below -max_guard_drop. False: compare point values only.")


# ---- ipa (METHODS.md section 4; no public code: every value here is unverified) ---------------

IPA_FEEDBACK_PROMPT = (
    "{question}\nA model answered: \"{response}\"\nWrite brief feedback on this answer: what is wrong, "
    "missing or not asked for? Do not write a new answer.")
IPA_REFERENCE_FEEDBACK_PROMPT = (
    "{question}\nA model answered: \"{response}\"\nThe reference answer is: \"{reference}\"\nWrite brief "
    "feedback on the model's answer, comparing it with the reference. Do not copy the reference.")
IPA_REFINE_PROMPT = (
    "{question}\nA first answer was: \"{response}\"\nFeedback on it: \"{feedback}\"\nWrite an improved "
    "answer to the question that follows the feedback.")
IPA_VERIFY_PROMPT = (
    "Question: {question}\nReference answer: {reference}\nResponse: {response}\n"
    "Judge the response against the reference answer and the image. Answer yes or no for each:\n"
    "entails: does the response entail the reference answer?\n"
    "complete: does it miss no key detail of the reference?\n"
    "consistent: does it contradict nothing in the reference or the image?\n"
    "follows: does it follow the question's instruction?\n"
    "Reply in exactly this format:\nentails: yes|no\ncomplete: yes|no\nconsistent: yes|no\nfollows: yes|no\n"
    "reason: <one sentence>")
IPA_VERIFY_RETRY_SUFFIX = "\nReply only in the format above, one 'criterion: yes|no' per line."
IPA_MAX_ROUNDS = 3  # the pipeline unrolls this many rounds (a compile-time constant)
@dataclass(frozen=True)
class IpaParams:
    rounds: int = _p(3, f"Progressive collection rounds, 1..{IPA_MAX_ROUNDS} (IPA: 3). Round 1 on all seeds; round "
                     "r > 1 on the seeds without a pair, generated by the model trained after round r-1; the last "
                     "round adds reference-guided feedback. The pipeline parameter `rounds` sets it.")
    perturbations: tuple[str, ...] = _p(("noise", "blur", "scale"), "Contrastive sampling: one extra response on "
                                        "each of these perturbed images: noise (augment's diffusion noise), blur "
                                        "(Gaussian), scale (down- then up-scaled). Empty: clean only.")
    noise_step: int = _p(500, "Diffusion step of the 'noise' perturbation (augment's schedule; 500 = SeVa's weak).")
    blur_sigma: float = _p(2.0, "Gaussian blur sigma in pixels of the 'blur' perturbation.")
    scale_factor: float = _p(0.25, "Side ratio the 'scale' perturbation shrinks the image to before scaling back.")
    revise: bool = _p(True, "Reflective revision: feedback on each sampled response, then a refined response.")
    reviser_model: str | None = _p(None, "Model that writes feedback and refinements; None = the round's policy.")
    feedback_prompt: str = _p(IPA_FEEDBACK_PROMPT, "Feedback template: {question} {response}.")
    reference_feedback_prompt: str = _p(IPA_REFERENCE_FEEDBACK_PROMPT, "Last round's reference-guided feedback "
                                        "template: {question} {response} {reference}.")
    refine_prompt: str = _p(IPA_REFINE_PROMPT, "Refinement template: {question} {response} {feedback}.")
    feedback_max_new_tokens: int = _p(256, "Longest feedback in tokens.")
    max_pairs_per_prompt: int = _p(2, "Pairs per seed at most (verified x unverified, picked seeded at random).")
    seed: int = _p(0, "Seed of the perturbations and of the pair picking.")


@dataclass(frozen=True)
class VerifyParams:
    backend: str = _p("local", "local: the policy (or `model`) answers the verification prompt; endpoint: an "
                      "OpenAI-compatible chat endpoint from VISALIGN_VERIFIER_URL/_MODEL/_API_KEY (a Secret).")
    model: str | None = _p(None, "Local verifier model (HF directory or s3:// URI); None = the round's policy.")
    prompt: str = _p(IPA_VERIFY_PROMPT, "Verification template: {question} {reference} {response}.")
    retry_suffix: str = _p(IPA_VERIFY_RETRY_SUFFIX, "Appended to the prompt when the first answer was unparseable.")
    require: tuple[str, ...] = _p(("entails", "complete", "consistent", "follows"),
                                  "Criteria that must all hold for 'verified' (IPA: all four).")
    max_new_tokens: int = _p(128, "Longest verifier answer in tokens.")
    batch_size: int = _p(8, "Local verifier: prompts per generate() call.")
    endpoint_timeout_s: float = _p(60.0, "Endpoint: seconds before a request times out.")
    endpoint_retries: int = _p(4, "Endpoint: retries after a timeout, connection error, 429 or 5xx.")
    endpoint_backoff_s: float = _p(1.0, "Endpoint: first backoff in seconds, multiplied by backoff_factor per retry.")
    endpoint_backoff_factor: float = _p(2.0, "Endpoint: backoff multiplier.")
    endpoint_backoff_max_s: float = _p(30.0, "Endpoint: longest single backoff in seconds.")
    endpoint_send_images: bool = _p(True, "Endpoint: send the image(s) as data URLs with the prompt.")
    endpoint_concurrency: int = _p(4, "Endpoint: requests in flight at most (answers keep their order).")
    max_consecutive_errors: int | None = _p(20, "Endpoint circuit breaker: after this many items in a row without "
                                            "an answer (every retry failed), stop calling; the rest count as error "
                                            "(skipped_after_outage). >= 1; None = never stop.")
    max_error_share: float = _p(0.5, "ipa-pairs fails (naming the endpoint and the counts) when more than this share "
                                "of the round's verdicts are errors, instead of training on a few pairs. In [0, 1]; "
                                "1 = never fail.")


# ---- end ipa ----------------------------------------------------------------------------------


# ---- mia-dpo (METHODS.md section 2) -----------------------------------------------------------

@dataclass(frozen=True)
class ComposeParams:
    formats: tuple[str, ...] = _p(("sequence", "grid", "pic_in_pic"), "Multi-image builders in use: sequence, "
                                  "grid, pic_in_pic (MIA-DPO: all three). See visalign.mia_dpo.compose.")
    mix: tuple[float, ...] = _p((15.1, 9.3, 4.5), "Relative weight of each format, in the order of `formats` "
                                "(MIA-DPO's LLaVA-1.5 data: 15.1k sequence, 9.3k grid, 4.5k pic-in-pic pairs).")
    sequence_images: tuple[int, ...] = _p((2, 3, 4, 5), "Sequence: images in all (target + 1-4 distractors), drawn "
                                          "uniformly (MIA-DPO: 2-5).")
    grid_layouts: tuple[str, ...] = _p(("1x2", "1x3", "2x2", "2x3", "3x3"), "Grid: layouts (rows x columns), drawn "
                                       "uniformly (MIA-DPO: 2 or 3 in a row, 2x2, 2x3, 3x3).")
    cell_size: int = _p(448, "Grid: side of a cell in pixels (MIA-DPO: 448); images are fitted with aspect kept.")
    margin: int = _p(40, "Grid: white margin between and around cells in pixels (MIA-DPO: 40).")
    square_canvas: bool = _p(True, "Grid and pic-in-pic: pad the composite to a square with white (CLIP-style "
                             "processors centre-crop a wide image: outer cells would be cut off and the token map "
                             "would no longer line up with the recorded boxes).")
    label_font_size: int | None = _p(None, "Grid: 'Image{n}' label size in pixels; None = cell_size / 12.")
    pip_scale: float = _p(0.7, "Pic-in-pic: the target's size as a fraction of the background's (MIA-DPO: 0.7).")
    pip_phrases: tuple[str, ...] = _p(("For the image in the center, ", "Looking at the small picture in the middle, ",
                                       "Focusing on the central image, "),
                                      "Pic-in-pic: opening phrases, one drawn per prompt (MIA-DPO's first one; the "
                                      "others unverified).")
    distractor_group: str = _p("image_dir", "Where distractors come from: image_dir = the same seed file and the "
                               "same top-level image folder (LLaVA-665k's subsets: coco, ocr_vqa, vg, gqa, textvqa), "
                               "source = anywhere in the same seed file (MIA-DPO: 'from the same source').")
    seed: int = _p(0, "Seed of the format, distractor, order and layout draws (per prompt).")


@dataclass(frozen=True)
class SelectParams:
    sequence_thresholds: tuple[float, ...] = _p((0.8, 0.7, 0.6, 0.6), "Sequence: keep a response as rejected when "
                                                "its attention ratio is below this, for 2, 3, 4, 5 images (MIA-DPO).")
    grid_thresholds: tuple[float, ...] = _p((0.7, 0.6, 0.5, 0.4, 0.3), "Grid: the same, for 2, 3, 4, 6, 9 images "
                                            "(MIA-DPO).")
    pip_threshold: float = _p(0.8, "Pic-in-pic: the same, for the central region (MIA-DPO: 0.8).")
    min_perplexity: float = _p(1.1, "Keep only responses with perplexity exp(-mean log max-softmax) above this "
                               "(MIA-DPO: 1.1): a confident answer is not a hallucination candidate.")
    max_reference_chars: int = _p(512, "Drop seeds whose reference answer is this long or longer (MIA-DPO: 512).")
    max_length_ratio: float | None = _p(3.0, "Post-selection: drop pairs whose longer side is more than this many "
                                        "times the shorter, in characters (unverified; None = off).")
    max_edit_distance: int | None = _p(400, "Post-selection: drop pairs whose chosen and rejected differ by more "
                                       "than this many character edits (Levenshtein; unverified; None = off).")
    histogram_bins: int = _p(20, "Bins of the attention-ratio histograms in the report.")


SEQUENCE_THRESHOLD_IMAGES = (2, 3, 4, 5)  # the image counts sequence_thresholds are given for, in order
GRID_THRESHOLD_IMAGES = (2, 3, 4, 6, 9)  # the image counts grid_thresholds are given for, in order

# ---- end mia-dpo ------------------------------------------------------------------------------


# ---- mpo (METHODS.md section 3) ---------------------------------------------------------------

@dataclass(frozen=True)
class MpoPairsParams:
    threshold: float = _p(0.9, "A response is correct when its answer's score reaches this (MPO: 0.9).")
    numeric_rel_tol: float = _p(1e-3, "Numeric answers: relative tolerance (MPO: 1e-3).")
    max_pairs_per_question: int = _p(15, "Correctness pairs kept per question, drawn at random (MPO: 15).")
    seed: int = _p(0, "Seed of the per-question pair draw and of DropoutNTP's sampling.")
    dropout_ratio: float = _p(0.5, "DropoutNTP: fraction of the chosen answer's words kept as the prefix (MPO: 0.5).")
    dropout_do_sample: bool = _p(True, "DropoutNTP: sample the image-free continuation (MPO: yes).")
    dropout_temperature: float = _p(0.7, "DropoutNTP: sampling temperature (MPO: 0.7).")
    dropout_top_k: int = _p(50, "DropoutNTP: top-k (MPO: 50; 0 = no limit).")
    dropout_top_p: float = _p(1.0, "DropoutNTP: nucleus mass in (0, 1]; 1 = off.")
    dropout_max_new_tokens: int = _p(512, "DropoutNTP: longest continuation in tokens.")
    batch_size: int = _p(8, "DropoutNTP: continuations per generate() call.")
    dtype: str = _p("auto", "DropoutNTP: model dtype (auto, bfloat16, float16, float32).")

# ---- end mpo ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    name: str
    sample: SampleParams = field(default_factory=SampleParams)
    augment: AugmentParams = field(default_factory=AugmentParams)
    rollout: RolloutParams = field(default_factory=RolloutParams)
    filter: FilterParams = field(default_factory=FilterParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    register: RegisterParams = field(default_factory=RegisterParams)
    compose: ComposeParams = field(default_factory=ComposeParams)  # mia-dpo
    select: SelectParams = field(default_factory=SelectParams)  # mia-dpo
    ipa: IpaParams = field(default_factory=IpaParams)
    verify: VerifyParams = field(default_factory=VerifyParams)
    pairs: MpoPairsParams = field(default_factory=MpoPairsParams)  # mpo

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


STAGES = ("sample", "augment", "rollout", "filter", "train", "evaluate", "register", "ipa", "verify", "compose", "select",
          "pairs")

# What every toy profile trains with (each adds its own lengths and epochs): a small LoRA and a
# learning rate that moves toyworld's 150k-parameter model in minutes on two CPU cores.
TOY_TRAIN: dict[str, Any] = {
    "train.lora_r": 16,
    "train.lora_alpha": 32,
    "train.learning_rate": 5e-4,
    "train.warmup_ratio": 0.1,
    "train.per_device_batch_size": 8,
    "train.gradient_accumulation_steps": 1,
    "train.deepspeed": None,
    "train.gradient_checkpointing": False,
}
