"""MPO's loss: the pure formula against an independent plain-torch version (delta over several
steps included), and MPOTrainer against TRL's own computation on the tiny model."""

import math

import pytest
import torch

from visalign import mpo_loss, schema, train
from visalign.recipes import TrainParams
from visalign.schema import Pair

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
    from transformers import AutoModelForImageTextToText

    from conftest import COLOURS, draw
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


def _make(cls, parts, tmp_path, loss_types, weights):
    from peft import LoraConfig

    new_model, processor, dataset = parts
    model = new_model()
    params = TrainParams(loss_type=loss_types, loss_weights=weights, lora_r=4, lora_alpha=8, per_device_batch_size=4,
                         gradient_accumulation_steps=1, max_length=128, deepspeed=None, gradient_checkpointing=False,
                         warmup_ratio=0.0, learning_rate=1e-2, lora_dropout=0.0)
    args = train._dpo_config(params, tmp_path / "ckpt", bf16=False)
    peft = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=train.language_model_linear_layers(model),
                      task_type="CAUSAL_LM")
    return cls(model=model, args=args, train_dataset=dataset, processing_class=processor, peft_config=peft)


def test_trainer_matches_trl_at_zero_delta_then_shifts_and_logs(trainer_parts, tmp_path):
    """With delta held at 0 the subclass must reproduce TRL's own loss on the same batch (so it reads
    log-probs exactly as TRL does); with the running delta it differs and logs every part."""
    from trl import DPOTrainer

    trainer = _make(mpo_loss.trainer_class(), trainer_parts, tmp_path, MPO, WEIGHTS)
    assert train._trainer(TrainParams(loss_type=MPO, loss_weights=WEIGHTS)) is not DPOTrainer
    assert train._trainer(TrainParams(loss_type=MPO, bco_delta=False)) is DPOTrainer
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
    assert shifted != pytest.approx(trl_loss, rel=1e-3)
    assert trainer.delta.batches == 2
    logged = trainer._metrics["train"]
    for key in ("mpo/dpo", "mpo/bco", "mpo/sft", "mpo/delta", "rewards/margins", "rewards/accuracies"):
        assert logged[key], key
    assert logged["mpo/delta"][-1] == pytest.approx(trainer.delta.value)


def test_other_loss_types_stay_with_trl(trainer_parts, tmp_path):
    trainer = _make(mpo_loss.trainer_class(), trainer_parts, tmp_path, ("sigmoid", "sft"), None)
    assert not trainer.mpo_path
    with pytest.raises(ValueError, match="combines only with"):
        _make(mpo_loss.trainer_class(), trainer_parts, tmp_path, ("hinge", "bco_pair"), None)
