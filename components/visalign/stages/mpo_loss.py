"""MPO's loss (METHODS.md section 3): weighted DPO (sigmoid) + BCO-pair WITH the reward shift + SFT.

    L = w_dpo * -log s(beta * (lr_c - lr_r))
      + w_bco * [-log s(beta * lr_c - delta) - log s(-(beta * lr_r - delta))]
      + w_sft * NLL(chosen), token mean
    lr = policy minus reference summed log-prob; delta = the cumulative running mean (equal weight
    per batch, across ranks) of each batch's mean of all chosen and rejected rewards beta * lr,
    updated with the batch BEFORE its loss is computed.

TRL 1.16 (pinned by the project) computes bco_pair without delta, and its DPOTrainer computes
every loss type inside one `_compute_loss` with no per-loss hook. So `MPOTrainer` overrides
`_compute_loss` only when bco_pair with delta is asked for, reusing TRL's pieces (the fused-LM-head
forward, `compute_ref_log_probs`, the `_metrics` logging); every other loss-type combination goes
to TRL unchanged. `mpo_loss` is the formula as a pure function of log-probs (tested against an
independent implementation). The running delta is saved in every checkpoint (DELTA_FILE) and read
back when training resumes from one, so a resumed run does not restart it at 0.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any

# MPO_LOSS_TYPES: the loss types the delta-aware path computes itself; anything else stays with TRL.
# recipes.validate rejects other combinations with bco_pair before any work starts.
from visalign.recipes.registry import MPO_LOSS_TYPES

# The DPOConfig options the delta-aware path assumes at their defaults (it does not implement the others).
PLAIN_DPO_OPTIONS = {"ld_alpha": None, "use_weighting": False, "f_divergence_type": "reverse_kl"}
DELTA_FILE = "mpo_delta.json"  # in every checkpoint-*/ folder: a resumed run continues the running mean


@dataclass
class RunningDelta:
    """delta = the mean of the per-batch reward means seen so far (each batch weighs the same)."""

    total: float = 0.0
    batches: int = 0

    @property
    def value(self) -> float:
        return self.total / self.batches if self.batches else 0.0

    def update(self, batch_mean: float) -> float:
        self.total += float(batch_mean)
        self.batches += 1
        return self.value

    def save(self, folder: str | os.PathLike) -> None:
        with open(os.path.join(folder, DELTA_FILE), "w", encoding="utf-8") as f:
            json.dump(asdict(self), f)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> RunningDelta | None:
        """The delta saved in a checkpoint folder; None when it holds none."""
        path = os.path.join(folder, DELTA_FILE)
        if not os.path.exists(path):
            return None
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        return cls(total=float(saved["total"]), batches=int(saved["batches"]))


def mpo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, chosen_nll, *, beta: float,
             loss_types: tuple[str, ...] | list[str], weights: tuple[float, ...] | list[float] | None,
             delta: float) -> tuple[Any, dict[str, Any]]:
    """The weighted loss and its parts ('sigmoid', 'bco_pair', 'sft': batch means, tensors).

    chosen_logps etc.: summed log-probs per sequence, shape (B,); chosen_nll: the chosen side's
    token-mean negative log-likelihood (a scalar); delta: the reward shift to use for this batch.
    """
    import torch.nn.functional as F

    weights = list(weights) if weights is not None else [1.0] * len(loss_types)
    chosen_rewards = beta * (chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (rejected_logps - ref_rejected_logps)
    parts: dict[str, Any] = {}
    loss = 0.0
    for name, w in zip(loss_types, weights, strict=True):
        if name == "sigmoid":  # DPO, eq. (1) of the MPO paper
            part = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
        elif name == "bco_pair":  # BCO with MPO's reward shift delta
            part = (-F.logsigmoid(chosen_rewards - delta) - F.logsigmoid(-(rejected_rewards - delta))).mean()
        elif name == "sft":
            part = chosen_nll
        else:
            raise ValueError(f"loss type {name!r}: the MPO path computes only {MPO_LOSS_TYPES}")
        parts[name] = part
        loss = loss + w * part
    return loss, parts


def batch_reward_mean(chosen_rewards, rejected_rewards, gather=None) -> float:
    """Mean of all chosen and rejected rewards of the batch, over every rank when `gather` is given."""
    import torch

    rewards = torch.cat([chosen_rewards.detach(), rejected_rewards.detach()])
    if gather is not None:
        rewards = gather(rewards)
    return rewards.float().mean().item()


def trainer_class():
    """MPOTrainer, built on first use so this module imports without TRL."""
    from trl import DPOTrainer

    class MPOTrainer(DPOTrainer):
        """DPOTrainer whose bco_pair carries MPO's reward shift delta (see the module docstring)."""

        def __init__(self, *args: Any, mpo_delta: bool = True, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.delta = RunningDelta()
            self.mpo_path = mpo_delta and "bco_pair" in self.loss_types
            if self.mpo_path:
                self._check_mpo_options()

        def _check_mpo_options(self) -> None:
            """Loss types are checked by recipes.validate too; the DPOConfig options only here (recipes
            do not set them, a caller building the trainer directly may)."""
            unsupported = [t for t in self.loss_types if t not in MPO_LOSS_TYPES]
            options = {"ld_alpha": self.ld_alpha, "use_weighting": self.use_weighting,
                       "f_divergence_type": self.f_divergence_type}
            changed = {k: v for k, v in options.items() if v != PLAIN_DPO_OPTIONS[k]}
            if unsupported or changed:
                raise ValueError(
                    f"train.loss_type={self.loss_types}: bco_pair with MPO's delta combines only with "
                    f"{MPO_LOSS_TYPES}, plain reverse-KL DPO, no ld_alpha/use_weighting; "
                    f"unsupported here: {unsupported or changed}. Set train.bco_delta=false for TRL's "
                    "bco_pair (no shift).")

        def _save_checkpoint(self, model, trial):
            super()._save_checkpoint(model, trial)
            if self.mpo_path and self.args.should_save:  # delta is the same on every rank (a gathered mean)
                from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

                folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
                self.delta.save(folder)

        def _load_optimizer_and_scheduler(self, checkpoint):
            # Trainer calls this once with the resumed checkpoint's folder, with or without DeepSpeed.
            super()._load_optimizer_and_scheduler(checkpoint)
            saved = RunningDelta.load(checkpoint) if checkpoint and self.mpo_path else None
            if saved is not None:
                self.delta = saved

        def _compute_loss(self, model, inputs, return_outputs):
            if not self.mpo_path or return_outputs:
                return super()._compute_loss(model, inputs, return_outputs)
            mode = "train" if self.model.training else "eval"
            model_kwargs = {k: v for k, v in inputs.items()
                            if k not in ("completion_mask", "ref_chosen_logps", "ref_rejected_logps")}
            model_kwargs["use_cache"] = False
            completion_mask = inputs["completion_mask"]
            labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
            outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)  # as TRL: log-probs, no logits
            shift_mask = completion_mask[..., 1:]
            per_token_logps = outputs.log_probs[:, -shift_mask.size(1):]
            chosen_logps, rejected_logps = per_token_logps.sum(dim=1).chunk(2, dim=0)  # batch is [chosen, rejected]
            if self.precompute_ref_logps:  # stages.reference: computed once per pair before training
                ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
            else:
                ref_chosen, ref_rejected = self.compute_ref_log_probs(
                    self.ref_model if self.ref_model is not None else model, inputs)
            chosen_mask, _ = shift_mask.chunk(2, dim=0)
            chosen_nll = -per_token_logps.chunk(2, dim=0)[0][chosen_mask.bool()].mean()  # TRL's "sft"

            chosen_rewards = self.beta * (chosen_logps - ref_chosen).detach()
            rejected_rewards = self.beta * (rejected_logps - ref_rejected).detach()
            mean = batch_reward_mean(chosen_rewards, rejected_rewards, self.accelerator.gather)
            delta = self.delta.update(mean) if mode == "train" else self.delta.value  # before the loss
            loss, parts = mpo_loss(chosen_logps, rejected_logps, ref_chosen, ref_rejected, chosen_nll,
                                   beta=self.beta, loss_types=self.loss_types, weights=self.loss_weights,
                                   delta=delta)
            self._log_mpo(mode, parts, delta, chosen_rewards, rejected_rewards, chosen_logps, rejected_logps)
            return loss

        def _log_mpo(self, mode, parts, delta, chosen_rewards, rejected_rewards, chosen_logps, rejected_logps):
            """Each loss part, delta and TRL's usual reward metrics (the loss-curve callback sends them to MLflow)."""
            names = {"sigmoid": "mpo/dpo", "bco_pair": "mpo/bco", "sft": "mpo/sft"}
            gather, m = self.accelerator.gather, self._metrics[mode]
            for k, v in parts.items():
                m[names[k]].append(gather(v.detach().reshape(1)).mean().item())
            m["mpo/delta"].append(delta)
            c, r = gather(chosen_rewards), gather(rejected_rewards)
            m["rewards/chosen"].append(c.mean().item())
            m["rewards/rejected"].append(r.mean().item())
            m["rewards/margins"].append((c - r).mean().item())
            m["rewards/accuracies"].append((c > r).float().mean().item())
            m["logps/chosen"].append(gather(chosen_logps.detach()).mean().item())
            m["logps/rejected"].append(gather(rejected_logps.detach()).mean().item())

    return MPOTrainer
