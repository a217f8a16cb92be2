"""toyworld probe: the blank-image control answers every benchmark four ways and really shows a
blank image in the blank conditions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from visalign.stages import rollout
from visalign.stages.metrics import SHORT_PROMPT
from visalign.toyworld import export, probe, sft

TINY = {"num_seed_images": 4, "num_train_images": 6, "num_bench_images": 6, "num_heldout_images": 6,
        "num_multi_seq_rows": 4, "num_multi_grid_rows": 4}  # every size small


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    export.build_world(out, seed=0, **TINY)
    return out


@pytest.fixture(scope="module")
def untrained(world_dir, tmp_path_factory) -> Path:
    return sft.build_untrained_model(world_dir, tmp_path_factory.mktemp("untrained"))


def test_probe_every_kind_and_condition_with_a_real_blank_image(world_dir, untrained, tmp_path, monkeypatch):
    seen: list[tuple[str, bool]] = []  # (question, every pixel white) per request the engine gets
    generate = rollout.HFEngine.generate

    def recording(self, requests):
        seen.extend((r.question, all(bool((np.asarray(im) == 255).all()) for im in r.images)) for r in requests)
        return generate(self, requests)

    monkeypatch.setattr(rollout.HFEngine, "generate", recording)
    result = probe.probe(untrained, world_dir, limit=8, batch_size=4)

    assert set(result["benchmarks"]) == {"toy_short", "toy_pope"}  # no toy_steps in a plain build
    assert result["model_trained_on_this_world"] is None  # an untrained model's card names no world
    kinds = {"toy_short": {"colour", "shape", "count"},
             "toy_pope": {"random", "popular", "adversarial", "answer=yes", "answer=no"}}
    for name, bench in result["benchmarks"].items():
        assert bench["rows"] == 8
        assert set(bench["groups"]) == {"all"} | kinds[name], name
        for group, stats in bench["groups"].items():
            assert stats["n"] >= 1
            for condition in probe.CONDITIONS:
                assert 0 <= stats[condition]["accuracy"] <= 1, (name, group, condition)
                assert ("yes_ratio" in stats[condition]) == (name == "toy_pope")
            for prompt in probe.PROMPTS:
                gap = stats[f"real_{prompt}"]["accuracy"] - stats[f"blank_{prompt}"]["accuracy"]
                assert stats[f"gap_{prompt}"] == pytest.approx(gap)
                assert 0 <= stats[f"same_answer_{prompt}"] <= 1

    # 2 benchmarks x 8 rows x 4 conditions, in condition order: real, blank with the suffix, then bare.
    assert len(seen) == 2 * 8 * 4
    for b in range(2):
        block = seen[b * 32:(b + 1) * 32]
        real_s, blank_s, real_b, blank_b = (block[i * 8:(i + 1) * 8] for i in range(4))
        assert not any(white for _, white in real_s + real_b)
        assert all(white for _, white in blank_s + blank_b)
        assert [q for q, _ in real_s] == [q for q, _ in blank_s]
        assert [q for q, _ in real_b] == [q for q, _ in blank_b]
        assert all(q.endswith("\n" + SHORT_PROMPT.split("\n", 1)[1]) for q, _ in real_s)
        assert [q for q, _ in real_s] == [SHORT_PROMPT.format(question=q) for q, _ in real_b]

    out = probe.write(result, tmp_path / "probe")
    assert json.loads((out / probe.PROBE_FILE).read_text()) == result
    table = (out / probe.TABLE_FILE).read_text()
    assert "| toy_pope | answer=yes |" in table and "| toy_short | colour |" in table


def test_probe_rejects_bad_options(world_dir, tmp_path):
    with pytest.raises(ValueError, match=r"limit=0.*batch_size=0.*no config.json"):
        probe.probe(tmp_path, world_dir, limit=0, batch_size=0)


def test_cli_probe_writes_the_table(world_dir, untrained, tmp_path, capsys):
    from visalign.cli import main

    assert main(["toyworld", "probe", "--model", str(untrained), "--world", str(world_dir),
                 "--out", str(tmp_path / "p"), "--limit", "2", "--batch-size", "8"]) == 0
    assert "| toy_short | all | 2 |" in capsys.readouterr().out
    assert json.loads((tmp_path / "p" / probe.PROBE_FILE).read_text())["limit"] == 2
