"""Rollout resumes only its own work: a fingerprint of model, inputs and parameters guards the
responses already written, and a SIGKILLed rollout resumes to the very lines of an unbroken run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from visalign import schema
from visalign.errors import ResumeMismatch
from visalign.recipes import AugmentParams, RolloutParams, SampleParams
from visalign.stages import augment, resume, rollout, sample


@pytest.fixture
def prompts_and_views(llava_seeds, tmp_path):
    pdir, vdir = tmp_path / "prompts", tmp_path / "views"
    sample.run(sources=[str(llava_seeds)], output_dir=str(pdir), params=SampleParams(num_prompts=4))
    augment.run(prompts_dir=str(pdir), output_dir=str(vdir), params=AugmentParams(name="flip"))
    return pdir, vdir


def _run(pdir, vdir, model, out, **params):
    return rollout.run(prompts_dir=str(pdir), views_dir=str(vdir), model=str(model), output_dir=str(out),
                       params=RolloutParams(**{"batch_size": 4, "max_new_tokens": 3, "checkpoint_every": 2, **params}))


def _cut_to_first_chunk(out: Path) -> None:
    lines = (out / schema.RESPONSES_FILE).read_text().splitlines()
    (out / schema.RESPONSES_FILE).write_text("\n".join(lines[:4]) + "\n")


def test_a_resume_with_another_model_or_parameters_refuses_naming_what_changed(tiny_model, prompts_and_views,
                                                                                 tmp_path):
    pdir, vdir = prompts_and_views
    out = tmp_path / "resp"
    _run(pdir, vdir, tiny_model, out)
    _cut_to_first_chunk(out)
    other = tmp_path / "other_model"
    shutil.copytree(tiny_model, other)
    generation = other / "generation_config.json"
    config = json.loads(generation.read_text()) if generation.exists() else {}
    generation.write_text(json.dumps({**config, "note": "another model"}))
    with pytest.raises(ResumeMismatch, match=r"\(model changed\)"):
        _run(pdir, vdir, other, out)
    with pytest.raises(ResumeMismatch, match=r"\(parameters changed\)"):
        _run(pdir, vdir, tiny_model, out, max_new_tokens=5)
    # What a resume may change: the checkpoint interval and, for greedy decoding, the batch size.
    report = _run(pdir, vdir, tiny_model, out, batch_size=2, checkpoint_every=1)
    assert report.extra["resumed_prompts"] == 2 and report.rows_out == 8


def test_restart_discards_the_other_runs_responses(tiny_model, prompts_and_views, tmp_path):
    pdir, vdir = prompts_and_views
    out = tmp_path / "resp"
    _run(pdir, vdir, tiny_model, out)
    _cut_to_first_chunk(out)
    report = _run(pdir, vdir, tiny_model, out, max_new_tokens=2, resume_mismatch="restart")
    assert report.extra["resumed_prompts"] == 0 and report.rows_out == 8
    assert all(r.num_tokens <= 2 for r in schema.read_rows(out / schema.RESPONSES_FILE))
    fingerprint = json.loads((out / resume.RESUME_FILE).read_text())
    assert fingerprint == rollout._fingerprint(str(tiny_model), str(pdir), str(vdir), RolloutParams(
        batch_size=4, max_new_tokens=2, checkpoint_every=2))  # the restarted run's, for the next resume


def test_responses_without_a_fingerprint_are_not_taken_as_this_runs(tiny_model, prompts_and_views, tmp_path):
    pdir, vdir = prompts_and_views
    out = tmp_path / "resp"
    _run(pdir, vdir, tiny_model, out)
    (out / resume.RESUME_FILE).unlink()
    with pytest.raises(ResumeMismatch, match="no readable resume.json"):
        _run(pdir, vdir, tiny_model, out)


def test_a_sigkilled_rollout_resumes_to_the_lines_of_an_unbroken_run(tiny_model, prompts_and_views, tmp_path):
    pdir, vdir = prompts_and_views
    visalign = str(Path(sys.executable).with_name("visalign"))

    def command(out: Path) -> list[str]:
        return [visalign, "rollout", "--prompts", str(pdir), "--views", str(vdir), "--model", str(tiny_model),
                "--output", str(out), "--set", "rollout.max_new_tokens=48", "--set", "rollout.checkpoint_every=1",
                "--set", "rollout.batch_size=1"]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = tmp_path / "whole"
    subprocess.run(command(whole), check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(command(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    ckpt = killed / schema.RESPONSES_FILE
    while time.monotonic() < deadline and proc.poll() is None:
        if ckpt.exists() and len(ckpt.read_bytes().splitlines()) >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the rollout finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(ckpt.read_bytes().splitlines())
    assert 2 <= written < 8 and not (killed / "report.json").exists()
    subprocess.run(command(killed), check=True, env=env, capture_output=True)
    assert ckpt.read_bytes() == (whole / schema.RESPONSES_FILE).read_bytes()
    assert json.loads((killed / "report.json").read_text())["resumed_prompts"] >= 1
