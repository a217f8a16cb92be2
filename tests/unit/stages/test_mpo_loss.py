"""MPO's loss: the pure formula against an independent plain-torch version (delta over several
steps included), and MPOTrainer against TRL's own computation on the tiny model."""

import math
from dataclasses import replace

import pytest
import torch

from visalign import schema
from visalign.recipes import TrainParams
from visalign.schema import Pair
from visalign.stages import mpo_loss, train

BETA, WEIGHTS = 0.1, (0.8, 0.2, 1.0)
MPO = ("sigmoid", "bco_pair", "sft")


def reference_loss(c, r, rc, rr, nll, beta, weights, delta):
    """MPO's equations written out element by element, with math only (no torch.nn.functional)."""
    def log_sig(x):
        return -math.log1p(math.exp(-x))

    dpo = bco = 0.0
    for ci, ri, rci, rri in zip(c, r, rc, rr, strict=True):
        cr, rj = beta * (ci - rci), beta * (ri - rri)
        dpo += -log_sig(cr - rj)
        bco += -log_sig(cr - delta) - log_sig(-(rj - delta))
    n = len(c)
    return weights[0] * dpo / n + weights[1] * bco / n + weights[2] * nll


BATCHES = [  # (policy chosen, policy rejected, ref chosen, ref rejected, chosen nll): fixed numbers
    ([-10.0, -12.0], [-11.0, -9.0], [-10.5, -12.5], [-10.0, -9.5], 1.3),
    ([-8.0, -20.0], [-15.0, -7.0], [-9.0, -18.0], [-14.0, -8.0], 0.9),
    ([-5.0, -6.0], [-30.0, -4.0], [-7.0, -6.5], [-25.0, -5.0], 0.4),
]


def test_mpo_loss_matches_an_independent_implementation_with_the_running_delta():
    delta = mpo_loss.RunningDelta()
    batch_means = []
    for c, r, rc, rr, nll in BATCHES:
        t = [torch.tensor(x) for x in (c, r, rc, rr)]
        mean = mpo_loss.batch_reward_mean(BETA * (t[0] - t[2]), BETA * (t[1] - t[3]))
        d = delta.update(mean)  # updated before the loss
        batch_means.append(sum(BETA * (a - b) for a, b in zip(c + r, rc + rr, strict=True)) / (2 * len(c)))
        expected_delta = sum(batch_means) / len(batch_means)
        assert d == pytest.approx(expected_delta, abs=1e-6)
        loss, parts = mpo_loss.mpo_loss(*t, torch.tensor(nll), beta=BETA, loss_types=MPO, weights=WEIGHTS, delta=d)
        assert loss.item() == pytest.approx(reference_loss(c, r, rc, rr, nll, BETA, WEIGHTS, expected_delta), rel=1e-5)
        assert set(parts) == set(MPO)
    assert delta.batches == 3 and delta.value != 0


def test_hand_worked_numbers():
    """One pair, rewards 0.2 and -0.1, delta 0.05: dpo = -log s(0.3), bco = -log s(0.15) - log s(0.15)."""
    t = [torch.tensor([x]) for x in (2.0, -1.0, 0.0, 0.0)]
    loss, parts = mpo_loss.mpo_loss(*t, torch.tensor(0.5), beta=0.1, loss_types=MPO, weights=(1, 1, 1), delta=0.05)
    assert parts["sigmoid"].item() == pytest.approx(0.554355, abs=1e-5)
    assert parts["bco_pair"].item() == pytest.approx(2 * 0.620957, abs=1e-5)
    assert loss.item() == pytest.approx(0.554355 + 2 * 0.620957 + 0.5, abs=1e-5)


def test_without_delta_bco_equals_trls_unshifted_form():
    t = [torch.tensor(x) for x in BATCHES[0][:4]]
    _, parts = mpo_loss.mpo_loss(*t, torch.tensor(0.0), beta=BETA, loss_types=("bco_pair",), weights=None, delta=0.0)
    cr, rr = BETA * (t[0] - t[2]), BETA * (t[1] - t[3])
    trl = (-torch.nn.functional.logsigmoid(cr) - torch.nn.functional.logsigmoid(-rr)).mean()
    assert parts["bco_pair"].item() == pytest.approx(trl.item())


@pytest.fixture
def trainer_parts(tiny_model, tmp_path):
    from assets import COLOURS, draw
    from transformers import AutoModelForImageTextToText

    from visalign.models import load_processor

    d = tmp_path / "pairs"
    (d / "images").mkdir(parents=True)
    pairs = []
    for i in range(4):
        draw(COLOURS[i]).save(d / "images" / f"{i}.png")
        pairs.append(Pair(id=str(i), images=[f"images/{i}.png"], prompt="What colour is the circle?",
                          chosen=COLOURS[i], rejected=COLOURS[(i + 1) % 4], prompt_id=f"p{i}"))
    schema.write_rows(d / schema.PAIRS_FILE, pairs)
    dataset, _ = train.load_pairs_dataset(d)
    return lambda: AutoModelForImageTextToText.from_pretrained(tiny_model), load_processor(tiny_model), dataset


def _make(cls, parts, tmp_path, loss_types, weights, **train_params):
    from peft import LoraConfig

    new_model, processor, dataset = parts
    model = new_model()
    params = TrainParams(**{**dict(loss_type=loss_types, loss_weights=weights, lora_r=4, lora_alpha=8,
                                   per_device_batch_size=4, gradient_accumulation_steps=1, max_length=128,
                                   deepspeed=None, gradient_checkpointing=False, warmup_ratio=0.0,
                                   learning_rate=1e-2, lora_dropout=0.0), **train_params})
    args = train._dpo_config(params, tmp_path / "ckpt", bf16=False)
    peft = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=train.language_model_linear_layers(model),
                      task_type="CAUSAL_LM")
    return cls(model=model, args=args, train_dataset=dataset, processing_class=processor, peft_config=peft)


def _perturb_lora(model, seed=0, scale=0.5):
    """A fresh LoRA has B = 0, so policy == reference and every log-ratio is 0; random B makes them not."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=g) * scale)


def test_trainer_matches_trl_at_zero_delta_and_the_formula_with_its_delta(trainer_parts, tmp_path, monkeypatch):
    """Non-zero log-ratios (perturbed LoRA): with delta held at 0 the subclass reproduces TRL's own
    loss on the same batch (so it reads log-probs exactly as TRL does); with the running delta its
    loss is the pure formula at the trainer's delta, and every part is logged."""
    from trl import DPOTrainer

    trainer = _make(mpo_loss.trainer_class(), trainer_parts, tmp_path, MPO, WEIGHTS)
    _perturb_lora(trainer.model)
    assert train._trainer(TrainParams(loss_type=MPO, loss_weights=WEIGHTS)) is not DPOTrainer
    assert train._trainer(TrainParams(loss_type=MPO, bco_delta=False)) is DPOTrainer
    calls, formula = [], mpo_loss.mpo_loss
    monkeypatch.setattr(mpo_loss, "mpo_loss", lambda *a, **kw: calls.append((a, kw)) or formula(*a, **kw))
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.model.train()
    with torch.no_grad():
        trl_loss = DPOTrainer._compute_loss(trainer, trainer.model, batch, False).item()
        trainer.delta.update = lambda mean: 0.0
        ours_at_zero = trainer._compute_loss(trainer.model, batch, False).item()
        del trainer.delta.update
        trainer.delta = mpo_loss.RunningDelta(total=5.0, batches=1)  # a large shift from earlier batches
        shifted = trainer._compute_loss(trainer.model, batch, False).item()
    assert ours_at_zero == pytest.approx(trl_loss, rel=1e-5)
    (c, r, rc, rr, nll), kw = (t.tolist() if t.dim() else t.item() for t in calls[1][0]), calls[1][1]
    log_ratios = [a - b for a, b in zip(c + r, rc + rr, strict=True)]
    assert min(abs(x) for x in log_ratios) > 1e-3  # policy and reference differ on every sequence
    batch_mean = BETA * sum(log_ratios) / len(log_ratios)
    assert kw["delta"] == pytest.approx((5.0 + batch_mean) / 2, rel=1e-5) == trainer.delta.value
    assert shifted == pytest.approx(reference_loss(c, r, rc, rr, nll, BETA, WEIGHTS, kw["delta"]), rel=1e-5)
    assert shifted != pytest.approx(trl_loss, rel=1e-3)
    logged = trainer._metrics["train"]
    for key in ("mpo/dpo", "mpo/bco", "mpo/sft", "mpo/delta", "rewards/margins", "rewards/accuracies"):
        assert logged[key], key
    assert logged["mpo/delta"][-1] == pytest.approx(trainer.delta.value)


def test_batch_reward_mean_is_over_every_rank():
    here_c, here_r = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])
    other = torch.tensor([10.0, 20.0, 30.0, 40.0])  # the second rank's [chosen, rejected]
    got = mpo_loss.batch_reward_mean(here_c, here_r, gather=lambda t: torch.cat([t, other]))
    assert got == pytest.approx((1 + 2 + 3 + 4 + 10 + 20 + 30 + 40) / 8)
    assert mpo_loss.batch_reward_mean(here_c, here_r) == pytest.approx(2.5)  # one rank


def test_running_delta_is_saved_with_checkpoints_and_restored_on_resume(trainer_parts, tmp_path):
    """Two steps with a checkpoint after each; a new trainer resuming from the first checkpoint
    starts from its delta, and ends where the uninterrupted run ended."""
    cls = mpo_loss.trainer_class()
    full = _make(cls, trainer_parts, tmp_path / "a", MPO, WEIGHTS, per_device_batch_size=2, save_steps=1)
    full.train()
    first = mpo_loss.RunningDelta.load(tmp_path / "a" / "ckpt" / "checkpoint-1")
    assert first is not None and first.batches == 1 and full.delta.batches == 2
    assert mpo_loss.RunningDelta.load(tmp_path / "a" / "ckpt" / "checkpoint-2") == full.delta
    seen = []

    class Spy(cls):
        def _load_optimizer_and_scheduler(self, checkpoint):
            super()._load_optimizer_and_scheduler(checkpoint)
            seen.append(replace(self.delta))  # the delta training resumes with

    resumed = _make(Spy, trainer_parts, tmp_path / "b", MPO, WEIGHTS, per_device_batch_size=2, save_steps=1)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "ckpt" / "checkpoint-1"))
    assert seen == [first]  # resumed with the saved delta, not 0
    assert resumed.delta.batches == 2 and resumed.delta.total == pytest.approx(full.delta.total, rel=1e-4)
    assert mpo_loss.RunningDelta.load(tmp_path / "nowhere") is None


def test_bad_loss_combination_is_rejected_by_the_recipe_before_any_work():
    from visalign import recipes

    with pytest.raises(recipes.ConfigError) as e:
        recipes.load("seva", overrides={"train.loss_type": ("hinge", "bco_pair")})
    text = str(e.value)
    assert "train.loss_type=('hinge', 'bco_pair')" in text and "['hinge']" in text and "train.bco_delta=false" in text
    assert "mpo.delta" not in text
    recipes.load("seva", overrides={"train.loss_type": ("hinge", "bco_pair"), "train.bco_delta": False})
    recipes.load("mpo")  # sigmoid + bco_pair + sft: fine


def test_other_loss_types_stay_with_trl(trainer_parts, tmp_path):
    trainer = _make(mpo_loss.trainer_class(), trainer_parts, tmp_path, ("sigmoid", "sft"), None)
    assert not trainer.mpo_path
    with pytest.raises(ValueError, match="combines only with") as e:
        _make(mpo_loss.trainer_class(), trainer_parts, tmp_path, ("hinge", "bco_pair"), None)
    assert "train.bco_delta=false" in str(e.value)
    with pytest.raises(ValueError, match="use_weighting"):  # a DPOConfig option recipes do not set
        trainer = _make(mpo_loss.trainer_class(), trainer_parts, tmp_path, MPO, WEIGHTS)
        trainer.use_weighting = True
        trainer._check_mpo_options()
