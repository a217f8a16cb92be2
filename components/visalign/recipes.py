"""The recipes' parameters, with the papers' defaults: the one home of every parameter.

A recipe is a frozen dataclass of per-stage parameter dataclasses. CLI flags and pipeline
parameters are derived from these fields (`add_arguments`, `apply_overrides`); the help text is
written once, in each field's metadata. `profile="toy"` scales a recipe down for the tiny model
the demo and tests build (toyworld); the paper values stay the defaults.

    recipe = load("seva", profile="toy", overrides={"train.beta": 0.2})
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import dataclass, field, fields, replace
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


@dataclass(frozen=True)
class AugmentParams:
    name: str = _p("diffusion", "Augmentation: diffusion (SeVa), flip, random_resized_crop, autoaugment, "
                   "mocov2, simclr, byol. See visalign.augment.AUGMENTATIONS.")
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
                              "visalign.rollout.PROMPT_TEMPLATES.")
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
                         "visalign.mpo_loss). False: TRL's bco_pair as is, without the shift.")
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
    merge: bool = _p(False, "Also save the adapter merged into the base model.")
    logging_steps: int = _p(1, "Log the loss every this many steps.")
    save_steps: int = _p(200, "Save a resumable checkpoint every this many optimiser steps.")
    checkpoint_dir: str | None = _p(None, "Checkpoint directory (a workspace volume on a cluster); a re-run with the "
                                    "same one resumes from its last checkpoint. None: inside the output, removed after.")
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


@dataclass(frozen=True)
class RegisterParams:
    model_name: str = _p("visalign-seva", "Registered model name in MLflow.")
    target_metric: str = _p("pope/f1", "Metric that must improve for promotion: '<benchmark>/<metric>'.")
    guard_metrics: tuple[str, ...] = _p((), "Metrics that must not drop by more than max_guard_drop.")
    max_guard_drop: float = _p(0.01, "Largest allowed drop (absolute) of a guard metric.")
    min_improvement: float = _p(0.0, "Target metric must beat the champion by more than this.")


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
# The toy model's byte-level BPE knows only the toy world's words, so its templates are short; the
# toy verify template is also the one toyworld's verification SFT examples use (toyworld/verify_sft.py).
IPA_TOY_FEEDBACK_PROMPT = "{question}\nAnswer: {response}\nFeedback:"
IPA_TOY_REFERENCE_FEEDBACK_PROMPT = "{question}\nAnswer: {response}\nReference: {reference}\nFeedback:"
IPA_TOY_REFINE_PROMPT = "{question}\nAnswer: {response}\nFeedback: {feedback}"
IPA_TOY_VERIFY_PROMPT = "Verify: {question}\nReference: {reference}\nResponse: {response}"
IPA_TOY_VERIFY_RETRY_SUFFIX = "\nVerdict:"


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
                                  "grid, pic_in_pic (MIA-DPO: all three). See visalign.multi_image.")
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


def _validate_mpo(m: MpoPairsParams, t: TrainParams) -> list[str]:
    """The pairs rules and the delta-aware loss's (METHODS.md section 3); a list of problems, empty when fine."""
    from visalign.mpo_loss import MPO_LOSS_TYPES  # late: keeps this module free of heavy imports

    p = []
    others = [lt for lt in t.loss_type if lt not in MPO_LOSS_TYPES]
    if t.bco_delta and "bco_pair" in t.loss_type and others:  # every recipe: any may ask for bco_pair
        p.append(f"train.loss_type={t.loss_type}: bco_pair with MPO's delta (train.bco_delta=true) combines only "
                 f"with {MPO_LOSS_TYPES}, not {others}; drop those or set train.bco_delta=false for TRL's "
                 "bco_pair without the shift")
    if not 0 < m.threshold <= 1:
        p.append(f"pairs.threshold={m.threshold}: must be in (0, 1] (MPO: 0.9)")
    if m.numeric_rel_tol < 0:
        p.append(f"pairs.numeric_rel_tol={m.numeric_rel_tol}: must be >= 0 (MPO: 1e-3)")
    if not 0 < m.dropout_ratio < 1:
        p.append(f"pairs.dropout_ratio={m.dropout_ratio}: must be in (0, 1) (MPO: 0.5)")
    if m.dropout_temperature <= 0 or m.dropout_top_k < 0 or not 0 < m.dropout_top_p <= 1:
        p.append(f"pairs.dropout_temperature={m.dropout_temperature}, dropout_top_k={m.dropout_top_k}, "
                 f"dropout_top_p={m.dropout_top_p}: need temperature > 0, top_k >= 0, top_p in (0, 1]")
    for where, v in (("pairs.max_pairs_per_question", m.max_pairs_per_question), ("pairs.batch_size", m.batch_size),
                     ("pairs.dropout_max_new_tokens", m.dropout_max_new_tokens)):
        if v < 1:
            p.append(f"{where}={v}: must be >= 1")
    return p

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

# The papers' settings (METHODS.md). Only what differs from the dataclass defaults is listed.
PAPER: dict[str, dict[str, Any]] = {
    # MIA-DPO: reference answers are the chosen side; sigmoid DPO, LoRA r128/a256, lr 5e-5 linear,
    # warmup 0.1, ZeRO-2, 3 epochs, no repeats; global batch 64 = 1 per device x 8 accumulated x 8 GPUs.
    # max_length 4096: LLaVA-1.5 spends 576 tokens per image, so a 5-image sequence prompt is ~2.9k
    # tokens before its text and a 512-token answer; the default 2048 would cut image tokens.
    "mia-dpo": {"rollout.capture_attention": True, "train.max_length": 4096, "train.lora_r": 128,
                "train.lora_alpha": 256,
                "train.learning_rate": 5e-5, "train.lr_scheduler": "linear", "train.warmup_ratio": 0.1,
                "train.deepspeed": "zero2", "train.num_epochs": 3.0, "train.data_repeats": 1,
                "register.model_name": "visalign-mia-dpo"},
    "seva": {},
    # IPA (unverified, no public code): instructions matter ("follows"), so LLaVA's short-answer suffix
    # stays in the question; "normal sampling" samples (rollout's temperature/top_k); DPO + LoRA for
    # 1 epoch (no repeats).
    "ipa": {"sample.strip_suffixes": (), "rollout.do_sample": True, "train.data_repeats": 1,
            "register.model_name": "visalign-ipa"},
}

# Scaled down for toyworld's tiny model on two CPU cores: a few hundred prompts, one-token
# answers, a small LoRA and a learning rate that moves a 150k-parameter model in minutes.
TOY: dict[str, dict[str, Any]] = {
    "mia-dpo": {
        "sample.num_prompts": 240,
        "compose.cell_size": 64,
        "compose.margin": 6,
        "rollout.batch_size": 16,
        "rollout.max_new_tokens": 8,
        "select.max_length_ratio": 8.0,
        "train.lora_r": 16,
        "train.lora_alpha": 32,
        "train.learning_rate": 5e-4,
        "train.warmup_ratio": 0.1,
        "train.per_device_batch_size": 8,
        "train.gradient_accumulation_steps": 1,
        "train.max_length": 400,
        "train.num_epochs": 2.0,
        "train.deepspeed": None,
        "train.gradient_checkpointing": False,
        "evaluate.batch_size": 32,
        "evaluate.max_new_tokens": 8,
        "register.model_name": "visalign-mia-dpo-toy",
        "register.target_metric": "toy_multi_seq/accuracy",
        "register.guard_metrics": ("toy_pope/f1",),
    },
    "ipa": {
        "sample.num_prompts": 128,
        "sample.strip_suffixes": (),
        "rollout.batch_size": 32,
        "rollout.max_new_tokens": 8,
        # two samples per view at temperature 1: greedy answers of the tiny model rarely differ between
        # views, so few seeds got both a verified and a rejected answer (measured: 37 vs 150 pairs in round 1)
        "rollout.do_sample": True,
        "rollout.num_samples": 2,
        "rollout.temperature": 1.0,
        "ipa.feedback_max_new_tokens": 8,
        "ipa.scale_factor": 0.5,
        "ipa.feedback_prompt": IPA_TOY_FEEDBACK_PROMPT,
        "ipa.reference_feedback_prompt": IPA_TOY_REFERENCE_FEEDBACK_PROMPT,
        "ipa.refine_prompt": IPA_TOY_REFINE_PROMPT,
        "verify.prompt": IPA_TOY_VERIFY_PROMPT,
        "verify.retry_suffix": IPA_TOY_VERIFY_RETRY_SUFFIX,
        "verify.max_new_tokens": 8,
        "verify.batch_size": 32,
        "train.data_repeats": 1,
        "train.num_epochs": 2.0,
        "train.lora_r": 16,
        "train.lora_alpha": 32,
        "train.learning_rate": 5e-4,
        "train.warmup_ratio": 0.1,
        "train.per_device_batch_size": 8,
        "train.gradient_accumulation_steps": 1,
        "train.max_length": 160,
        "train.deepspeed": None,
        "train.gradient_checkpointing": False,
        "evaluate.batch_size": 64,
        "evaluate.max_new_tokens": 8,
        "register.model_name": "visalign-ipa-toy",
        "register.target_metric": "toy_pope/f1",
        "register.guard_metrics": ("toy_mc/accuracy",),
    },
    "seva": {
        "sample.num_prompts": 240,
        "rollout.batch_size": 32,
        "rollout.max_new_tokens": 8,
        "train.lora_r": 16,
        "train.lora_alpha": 32,
        "train.learning_rate": 5e-4,
        "train.warmup_ratio": 0.1,
        "train.per_device_batch_size": 8,
        "train.gradient_accumulation_steps": 1,
        "train.max_length": 128,
        "train.deepspeed": None,
        "train.gradient_checkpointing": False,
        "evaluate.batch_size": 64,
        "evaluate.max_new_tokens": 8,
        "register.model_name": "visalign-seva-toy",
        "register.target_metric": "toy_pope/f1",
        "register.guard_metrics": ("toy_mc/accuracy",),
    },
}

# ---- mpo ----
# MPO (InternVL2-8B): 32 CoT samples per question at temperature 0.7 / top-k 50; loss 0.8 DPO + 0.2 BCO-pair
# (with delta) + 1.0 SFT, beta 0.1; full parameters, lr 5e-6 cosine, warmup 0.03, weight decay 0.05, 1 epoch;
# global batch 256 = 1 per device x 32 accumulated x 8 GPUs.
PAPER["mpo"] = {
    "rollout.num_samples": 32, "rollout.do_sample": True, "rollout.temperature": 0.7, "rollout.top_k": 50,
    "rollout.prompt_template": "cot", "rollout.max_new_tokens": 1024,
    "train.loss_type": ("sigmoid", "bco_pair", "sft"), "train.loss_weights": (0.8, 0.2, 1.0),
    "train.beta": 0.1, "train.lora_r": 0, "train.learning_rate": 5e-6, "train.lr_scheduler": "cosine",
    "train.warmup_ratio": 0.03, "train.weight_decay": 0.05, "train.num_epochs": 1.0, "train.data_repeats": 1,
    "train.gradient_accumulation_steps": 32, "register.model_name": "visalign-mpo",
}
# Toy: short step-by-step answers (toyworld's counting/comparing/locating kinds), a few samples each.
TOY["mpo"] = {
    "sample.num_prompts": 96,
    "rollout.num_samples": 6,
    "rollout.batch_size": 48,
    "rollout.max_new_tokens": 24,
    "rollout.temperature": 1.0,
    "pairs.dropout_max_new_tokens": 16,
    "pairs.batch_size": 32,
    "train.lora_r": 16,
    "train.lora_alpha": 32,
    "train.learning_rate": 5e-4,
    "train.warmup_ratio": 0.1,
    "train.weight_decay": 0.0,
    "train.per_device_batch_size": 8,
    "train.gradient_accumulation_steps": 1,
    "train.max_length": 160,
    "train.deepspeed": None,
    "train.gradient_checkpointing": False,
    "evaluate.batch_size": 64,
    "evaluate.max_new_tokens": 24,
    "register.model_name": "visalign-mpo-toy",
    "register.target_metric": "toy_steps/accuracy",
    "register.guard_metrics": ("toy_pope/f1",),
}
# ---- end mpo ----

PROFILES = {"paper": PAPER, "toy": TOY}


def names() -> list[str]:
    return sorted(PAPER)


def load(name: str, profile: str = "paper", overrides: dict[str, Any] | None = None) -> Recipe:
    """The recipe `name` under `profile`, with `overrides` ('stage.field': value) applied."""
    problems = []
    if name not in PAPER:
        problems.append(f"recipe={name!r}: unknown recipe; choose one of {names()}")
    if profile not in PROFILES:
        problems.append(f"profile={profile!r}: unknown profile; choose one of {sorted(PROFILES)}")
    if problems:
        raise ConfigError(problems)
    merged = {**PAPER[name], **PROFILES[profile].get(name, {}), **(overrides or {})}
    recipe = apply_overrides(Recipe(name=name), merged)
    validate(recipe)
    return recipe


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Parse CLI/pipeline strings into the field's type; raise ValueError naming the rule."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, where)
    if origin is tuple:
        if isinstance(value, (int, float)):
            value = [value]
        if isinstance(value, str):
            value = [v for v in value.split(",") if v] if not value.startswith("[") else json.loads(value)
        return tuple(_coerce(v, args[0], where) for v in value)
    if annotation is bool:
        if isinstance(value, str):
            if value.lower() in ("true", "1", "yes"):
                return True
            if value.lower() in ("false", "0", "no"):
                return False
            raise ValueError(f"{where}={value!r}: expected true or false")
        return bool(value)
    if annotation in (int, float, str):
        try:
            out = annotation(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}={value!r}: expected {annotation.__name__}") from None
        if annotation is int and isinstance(value, float) and value != out:
            raise ValueError(f"{where}={value!r}: expected an integer")
        return out
    return value


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def apply_overrides(recipe: Recipe, overrides: dict[str, Any]) -> Recipe:
    """Apply {'stage.field': value}; every unknown key or bad value is reported at once."""
    problems: list[str] = []
    per_stage: dict[str, dict[str, Any]] = {}
    stage_types = _field_types(Recipe)
    for key, value in overrides.items():
        stage, _, name = key.partition(".")
        if stage not in STAGES or not name:
            problems.append(f"{key}: unknown parameter; keys look like 'stage.field' with stage in {list(STAGES)}")
            continue
        hints = _field_types(stage_types[stage])
        if name not in hints:
            problems.append(f"{key}: unknown field of {stage}; known: {sorted(hints)}")
            continue
        try:
            per_stage.setdefault(stage, {})[name] = _coerce(value, hints[name], key)
        except ValueError as e:
            problems.append(str(e))
    if problems:
        raise ConfigError(problems)
    return replace(recipe, **{s: replace(getattr(recipe, s), **kv) for s, kv in per_stage.items()})


def validate(recipe: Recipe) -> None:
    """Check every rule before any work starts; report all problems at once."""
    p: list[str] = []
    s, a, r, f, t, e, g = (recipe.sample, recipe.augment, recipe.rollout, recipe.filter, recipe.train,
                           recipe.evaluate, recipe.register)
    if s.num_prompts < 1:
        p.append(f"sample.num_prompts={s.num_prompts}: must be >= 1")
    if s.max_questions_per_image < 1:
        p.append(f"sample.max_questions_per_image={s.max_questions_per_image}: must be >= 1")
    if not 0 <= a.diffusion_step < a.diffusion_timesteps:
        p.append(f"augment.diffusion_step={a.diffusion_step}: must be in [0, diffusion_timesteps="
                 f"{a.diffusion_timesteps}); SeVa uses 500 (weak) or 800 (strong)")
    if not 0 < a.beta_start < a.beta_end < 1:
        p.append(f"augment.beta_start={a.beta_start}, beta_end={a.beta_end}: need 0 < beta_start < beta_end < 1")
    from visalign.augment import AUGMENTATIONS  # late: augment imports numpy/PIL

    if a.name not in AUGMENTATIONS:
        p.append(f"augment.name={a.name!r}: unknown augmentation; choose one of {sorted(AUGMENTATIONS)}")
    if r.engine not in ("hf",):
        p.append(f"rollout.engine={r.engine!r}: unknown engine; available: hf")
    for where, v in (("rollout.batch_size", r.batch_size), ("rollout.max_new_tokens", r.max_new_tokens),
                     ("evaluate.batch_size", e.batch_size), ("train.per_device_batch_size", t.per_device_batch_size),
                     ("train.gradient_accumulation_steps", t.gradient_accumulation_steps),
                     ("train.data_repeats", t.data_repeats), ("rollout.checkpoint_every", r.checkpoint_every)):
        if v < 1:
            p.append(f"{where}={v}: must be >= 1")
    for where, v in (("rollout.dtype", r.dtype),):
        if v not in ("auto", "bfloat16", "float16", "float32"):
            p.append(f"{where}={v!r}: choose auto, bfloat16, float16 or float32")
    if f.target_count is not None and f.target_count < 1:
        p.append(f"filter.target_count={f.target_count}: must be >= 1 or None (keep all)")
    if t.beta <= 0:
        p.append(f"train.beta={t.beta}: must be > 0 (SeVa: 0.1)")
    if t.learning_rate <= 0:
        p.append(f"train.learning_rate={t.learning_rate}: must be > 0")
    if t.lora_r < 0:
        p.append(f"train.lora_r={t.lora_r}: must be >= 0 (0 = full fine-tuning)")
    if not 0 <= t.lora_dropout < 1:
        p.append(f"train.lora_dropout={t.lora_dropout}: must be in [0, 1)")
    if not 0 <= t.warmup_ratio < 1:
        p.append(f"train.warmup_ratio={t.warmup_ratio}: must be in [0, 1)")
    if t.deepspeed not in (None, "zero2", "zero3"):
        p.append(f"train.deepspeed={t.deepspeed!r}: choose zero2, zero3 or None")
    if t.num_nodes < 1:
        p.append(f"train.num_nodes={t.num_nodes}: must be >= 1 (1 = train in the step's own pod)")
    if t.precision not in ("auto", "bf16", "fp32"):
        p.append(f"train.precision={t.precision!r}: choose auto, bf16 or fp32 (fp16 is not supported; use bf16)")
    from visalign.train import LOSS_TYPES  # late: train imports torch lazily

    for lt in t.loss_type:
        if lt not in LOSS_TYPES:
            p.append(f"train.loss_type: {lt!r}: unknown; choose from {sorted(LOSS_TYPES)}")
    if t.loss_weights is not None and len(t.loss_weights) != len(t.loss_type):
        p.append(f"train.loss_weights={t.loss_weights}: needs one weight per loss type {t.loss_type}")
    if "/" not in g.target_metric:
        p.append(f"register.target_metric={g.target_metric!r}: write it as '<benchmark>/<metric>', e.g. pope/f1")
    for m in g.guard_metrics:
        if "/" not in m:
            p.append(f"register.guard_metrics: {m!r}: write it as '<benchmark>/<metric>'")
    if g.max_guard_drop < 0:
        p.append(f"register.max_guard_drop={g.max_guard_drop}: must be >= 0")
    p += _validate_ipa(recipe.ipa, recipe.verify)  # ---- ipa ----
    p += _validate_mia(recipe.compose, recipe.select, r, recipe.name)  # ---- mia-dpo ----
    p += _validate_sampling(r)  # ---- rollout sampling mode (mpo) ----
    p += _validate_mpo(recipe.pairs, t)  # ---- mpo ----
    if p:
        raise ConfigError(p)


def _validate_sampling(r: RolloutParams) -> list[str]:
    """The rollout sampling-mode rules; a list of problems, empty when fine."""
    from visalign.rollout import PROMPT_TEMPLATES  # late: keeps this module free of heavy imports

    p = []
    if r.num_samples < 1:
        p.append(f"rollout.num_samples={r.num_samples}: must be >= 1")
    if r.num_samples > 1 and not r.do_sample:
        p.append(f"rollout.num_samples={r.num_samples}: greedy decoding gives {r.num_samples} identical answers; "
                 "set rollout.do_sample=true or num_samples=1")
    if r.samples_without_reference < 1:
        p.append(f"rollout.samples_without_reference={r.samples_without_reference}: must be >= 1")
    if r.samples_without_reference > 1 and not r.do_sample:
        p.append(f"rollout.samples_without_reference={r.samples_without_reference}: greedy decoding gives identical "
                 "answers; set rollout.do_sample=true or samples_without_reference=1")
    if r.temperature <= 0:
        p.append(f"rollout.temperature={r.temperature}: must be > 0 (MPO: 0.7); for greedy set do_sample=false")
    if r.top_k < 0:
        p.append(f"rollout.top_k={r.top_k}: must be >= 0 (0 = no limit; MPO: 50)")
    if not 0 < r.top_p <= 1:
        p.append(f"rollout.top_p={r.top_p}: must be in (0, 1] (1 = off)")
    if r.prompt_template not in PROMPT_TEMPLATES:
        p.append(f"rollout.prompt_template={r.prompt_template!r}: unknown; choose one of {sorted(PROMPT_TEMPLATES)}")
    return p


def _validate_mia(c: ComposeParams, s: SelectParams, r: RolloutParams, name: str) -> list[str]:
    """The compose and select rules (METHODS.md section 2); a list of problems, empty when fine."""
    p = []
    if name == "mia-dpo" and not r.capture_attention:  # select reads the attention ratio of every response
        p.append("rollout.capture_attention=False: mia-dpo's select stage needs each response's attention to the "
                 "images (without it every response is dropped as no_attention); set rollout.capture_attention=true")
    known = ("sequence", "grid", "pic_in_pic")
    p += [f"compose.formats: {f!r}: unknown; choose from {known}" for f in c.formats if f not in known]
    if c.distractor_group not in ("image_dir", "source"):
        p.append(f"compose.distractor_group={c.distractor_group!r}: choose image_dir or source")
    if not c.formats or len(c.mix) != len(c.formats) or any(w < 0 for w in c.mix) or sum(c.mix) <= 0:
        p.append(f"compose.mix={c.mix}: needs one weight >= 0 per format {c.formats}, not all 0")
    p += [f"compose.sequence_images: {n}: must be in {SEQUENCE_THRESHOLD_IMAGES} (a threshold exists for those)"
          for n in c.sequence_images if n not in SEQUENCE_THRESHOLD_IMAGES]
    layouts = ("1x2", "1x3", "2x2", "2x3", "3x3")
    p += [f"compose.grid_layouts: {g!r}: unknown; choose from {layouts}" for g in c.grid_layouts if g not in layouts]
    if ("sequence" in c.formats and not c.sequence_images) or ("grid" in c.formats and not c.grid_layouts):
        p.append("compose.sequence_images / grid_layouts: a format in use needs at least one choice")
    if c.cell_size < 8 or c.margin < 0:
        p.append(f"compose.cell_size={c.cell_size}, margin={c.margin}: need cell_size >= 8 and margin >= 0")
    if not 0 < c.pip_scale < 1:
        p.append(f"compose.pip_scale={c.pip_scale}: must be in (0, 1) (MIA-DPO: 0.7)")
    if "pic_in_pic" in c.formats and not c.pip_phrases:
        p.append("compose.pip_phrases=(): give at least one opening phrase")
    for where, got, want in (("select.sequence_thresholds", s.sequence_thresholds, SEQUENCE_THRESHOLD_IMAGES),
                             ("select.grid_thresholds", s.grid_thresholds, GRID_THRESHOLD_IMAGES)):
        if len(got) != len(want):
            p.append(f"{where}={got}: needs one threshold per image count {want}")
        p += [f"{where}: {t}: must be in [0, 1]" for t in got if not 0 <= t <= 1]
    if not 0 <= s.pip_threshold <= 1:
        p.append(f"select.pip_threshold={s.pip_threshold}: must be in [0, 1]")
    if s.max_reference_chars < 1 or s.histogram_bins < 1:
        p.append(f"select.max_reference_chars={s.max_reference_chars}, histogram_bins={s.histogram_bins}: must be >= 1")
    if s.max_length_ratio is not None and s.max_length_ratio < 1:
        p.append(f"select.max_length_ratio={s.max_length_ratio}: must be >= 1 or None (off)")
    if s.max_edit_distance is not None and s.max_edit_distance < 0:
        p.append(f"select.max_edit_distance={s.max_edit_distance}: must be >= 0 or None (off)")
    if r.attention_layer is not None and r.attention_layer < 0:
        p.append(f"rollout.attention_layer={r.attention_layer}: must be >= 0 or None (the middle layer)")
    return p


def _validate_ipa(i: IpaParams, v: VerifyParams) -> list[str]:
    """The ipa and verify rules (METHODS.md section 4); a list of problems, empty when fine."""
    p = []
    if not 1 <= i.rounds <= IPA_MAX_ROUNDS:
        p.append(f"ipa.rounds={i.rounds}: must be in [1, {IPA_MAX_ROUNDS}] (the pipeline unrolls {IPA_MAX_ROUNDS} "
                 "rounds; IPA uses 3)")
    known = ("noise", "blur", "scale")
    p += [f"ipa.perturbations: {x!r}: unknown; choose from {known}" for x in i.perturbations if x not in known]
    if not 0 <= i.noise_step < 1000:
        p.append(f"ipa.noise_step={i.noise_step}: must be in [0, 1000) (augment's diffusion schedule)")
    if i.blur_sigma <= 0:
        p.append(f"ipa.blur_sigma={i.blur_sigma}: must be > 0")
    if not 0 < i.scale_factor < 1:
        p.append(f"ipa.scale_factor={i.scale_factor}: must be in (0, 1), e.g. 0.25")
    for where, v_ in (("ipa.feedback_max_new_tokens", i.feedback_max_new_tokens),
                      ("ipa.max_pairs_per_prompt", i.max_pairs_per_prompt), ("verify.max_new_tokens", v.max_new_tokens),
                      ("verify.batch_size", v.batch_size)):
        if v_ < 1:
            p.append(f"{where}={v_}: must be >= 1")
    for where, template, keys in (("ipa.feedback_prompt", i.feedback_prompt, ("question", "response")),
                                  ("ipa.reference_feedback_prompt", i.reference_feedback_prompt,
                                   ("question", "response", "reference")),
                                  ("ipa.refine_prompt", i.refine_prompt, ("question", "response", "feedback")),
                                  ("verify.prompt", v.prompt, ("question", "reference", "response"))):
        missing = [k for k in keys if "{" + k + "}" not in template]
        if missing:
            p.append(f"{where}: the template lacks {['{' + k + '}' for k in missing]}; it must contain {keys}")
    if v.backend not in ("local", "endpoint"):
        p.append(f"verify.backend={v.backend!r}: choose local or endpoint")
    criteria = ("entails", "complete", "consistent", "follows")
    p += [f"verify.require: {c!r}: unknown criterion; choose from {criteria}" for c in v.require if c not in criteria]
    if not v.require:
        p.append("verify.require=(): name at least one criterion (IPA: all four)")
    if v.endpoint_retries < 0 or v.endpoint_timeout_s <= 0 or v.endpoint_backoff_s < 0 or v.endpoint_backoff_factor < 1:
        p.append(f"verify.endpoint_*: need retries >= 0 (got {v.endpoint_retries}), timeout_s > 0 (got "
                 f"{v.endpoint_timeout_s}), backoff_s >= 0 (got {v.endpoint_backoff_s}), backoff_factor >= 1 "
                 f"(got {v.endpoint_backoff_factor})")
    if v.max_consecutive_errors is not None and v.max_consecutive_errors < 1:
        p.append(f"verify.max_consecutive_errors={v.max_consecutive_errors}: must be >= 1, or None to never stop "
                 "calling a failing endpoint (e.g. 20)")
    if not 0 <= v.max_error_share <= 1:
        p.append(f"verify.max_error_share={v.max_error_share}: must be in [0, 1] (e.g. 0.5; 1 = never fail)")
    return p


# ---- deriving CLI flags from the dataclasses -------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser, stage: str) -> None:
    """Add --recipe/--profile and one --<field> flag per field of the stage's parameters."""
    parser.add_argument("--recipe", default="seva", help=f"Recipe whose defaults apply: {names()}.")
    parser.add_argument("--profile", default="paper", choices=sorted(PROFILES),
                        help="paper: the papers' values; toy: scaled down for the toyworld model.")
    parser.add_argument("--set", action="append", default=[], metavar="STAGE.FIELD=VALUE",
                        help="Override any recipe parameter (repeatable).")
    cls = _field_types(Recipe)[stage]
    group = parser.add_argument_group(f"{stage} parameters (default: the recipe's)")
    for f in fields(cls):
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f"param_{f.name}", default=None,
                           help=f.metadata.get("help", ""))


def recipe_from_args(args: argparse.Namespace, stage: str) -> Recipe:
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError([f"--set {item!r}: write it as STAGE.FIELD=VALUE"])
        overrides[key] = value
    for k, v in vars(args).items():
        if k.startswith("param_") and v is not None:
            overrides[f"{stage}.{k[len('param_'):]}"] = v
    return load(args.recipe, args.profile, overrides)
