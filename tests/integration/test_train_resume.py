"""A train killed mid-run (SIGKILL, as an evicted pod) and run again, against the real MLflow server.

The second run resumes from the last complete checkpoint, marks the run the killed process left
RUNNING as KILLED, and carries the killed run's loss curve into its own run, so the curve covers
every step once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from visalign.report import read_report
from visalign.stages import train

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
from assets import CORPUS, colour_pairs  # noqa: E402

PAIRS, BATCH, EPOCHS = 8, 4, 6
STEPS = PAIRS // BATCH * EPOCHS  # 12 optimiser steps, a checkpoint after each
KILL_AFTER = 3  # SIGKILL once checkpoint-3 is complete (the kill may land while a later one is written)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from visalign.toyworld.model import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("tiny_model"), CORPUS * 5, seed=0)


@pytest.fixture
def pairs_dir(tmp_path) -> Path:
    return colour_pairs(tmp_path / "pairs", PAIRS)


def _train(pairs_dir: Path, model: Path, out: Path, ckpt: Path, log: Path) -> subprocess.Popen:
    sets = {"per_device_batch_size": BATCH, "data_repeats": 1, "num_epochs": EPOCHS, "save_steps": 1,
            "logging_steps": 1, "max_length": 128, "warmup_ratio": 0.0, "checkpoint_dir": ckpt}
    args = [str(Path(sys.executable).parent / "visalign"), "train", "--pairs", str(pairs_dir), "--model", str(model),
            "--output", str(out), "--profile", "toy"]
    for key, value in sets.items():
        args += ["--set", f"train.{key}={value}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def _last_complete_step(ckpt: Path) -> int:
    """The step of the newest checkpoint the trainer has finished writing (0: none yet)."""
    return max((int(p.name.split("-")[1]) for p in ckpt.glob("checkpoint-*") if (p / "trainer_state.json").exists()),
               default=0)


@pytest.mark.integration
def test_a_killed_train_resumes_and_its_runs_tell_the_truth(stack, tiny_model, pairs_dir, tmp_path):
    ckpt, out = tmp_path / "ckpt", tmp_path / "adapter"
    first = _train(pairs_dir, tiny_model, out, ckpt, tmp_path / "first.log")
    deadline = time.monotonic() + 60
    while _last_complete_step(ckpt) < KILL_AFTER:  # a few checkpoints in, and older ones rotated away
        assert first.poll() is None, f"train exited {first.returncode} before a checkpoint:\n" \
                                     f"{(tmp_path / 'first.log').read_text()}"
        assert time.monotonic() < deadline, "no checkpoint within 60 s"
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    killed_id = json.loads((ckpt / train.RUN_FILE).read_text())["run_id"]
    client = mlflow.MlflowClient()
    killed = client.get_run(killed_id)
    assert killed.info.status == "RUNNING"  # what a SIGKILL leaves behind
    killed_steps = [m.step for m in client.get_metric_history(killed_id, "loss")]
    assert KILL_AFTER <= max(killed_steps) < STEPS and not (out / "report.json").exists()

    second = _train(pairs_dir, tiny_model, out, ckpt, tmp_path / "second.log")
    assert second.wait(timeout=120) == 0, (tmp_path / "second.log").read_text()
    report = read_report(out)
    assert report["resumed"] is True and report["steps"] == STEPS
    new_id = report["mlflow_run_id"]
    assert new_id != killed_id
    assert client.get_run(killed_id).info.status == "KILLED"
    new = client.get_run(new_id)
    assert new.info.status == "FINISHED" and new.data.tags[train.RESUMED_FROM_TAG] == killed_id
    assert json.loads((ckpt / train.RUN_FILE).read_text())["run_id"] == new_id

    # The new run's loss curve covers every step once: the checkpoint's steps carried over (the
    # killed run's own values), the rest trained.
    history = sorted(client.get_metric_history(new_id, "loss"), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(1, STEPS + 1))
    killed_loss = {m.step: m.value for m in client.get_metric_history(killed_id, "loss")}
    assert history[0].value == pytest.approx(killed_loss[1])
    curve = json.loads((out / "loss_curve.json").read_text())
    assert [p["step"] for p in curve if "loss" in p] == list(range(1, STEPS + 1))
    assert len({json.dumps(p, sort_keys=True) for p in curve}) == len(curve)
    assert [p["loss"] for p in curve if "loss" in p] == pytest.approx([m.value for m in history])


def test_a_checkpoint_cut_off_while_saving_is_not_resumed_from(tmp_path):
    for step, complete in ((2, True), (3, True), (10, False)):  # numeric order, not 10 < 2 as text
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-x").mkdir()
    assert train._last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-3")
    assert train._last_complete_checkpoint(tmp_path / "empty") is None
