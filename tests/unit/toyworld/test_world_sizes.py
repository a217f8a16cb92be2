"""toyworld's benchmark sizes, the train split's two prompt forms, and the world's format version
(the demo rebuilds a cached world of another version)."""

from __future__ import annotations

import filecmp
import inspect
import json
from collections import Counter
from pathlib import Path

import pytest

from visalign.recipes import SHORT_ANSWER_SUFFIX
from visalign.toyworld import export, steps

TINY_SPLITS = {"num_seed_images": 2, "num_train_images": 2}  # the benchmarks at their default sizes
TARGETS = ("toy_pope", "toy_multi_seq", "toy_steps")  # SeVa and IPA, MIA-DPO, MPO
GUARDS = ("toy_mc", "toy_short", "toy_multi_grid", "toy_mmvet")


def test_default_target_benchmarks_hold_1000_rows_and_guards_stay_small(tmp_path):
    """The default benchmark sizes on a world whose seed and train splits are tiny (under a
    second): every target over 1,000 rows, every guard at about its old size, all held out."""
    from visalign.toyworld.judged import write_judged_data

    defaults = {p.name: p.default for p in inspect.signature(export.build_world).parameters.values()
                if p.kind is p.KEYWORD_ONLY}
    info = export.build_world(tmp_path / "w", seed=0, **TINY_SPLITS)
    counts = {**{k.removesuffix("_rows"): v for k, v in info["counts"].items() if k.endswith("_rows")},
              "toy_steps": steps.write_step_data(tmp_path / "w", seed=0)["step_bench"],
              "toy_mmvet": write_judged_data(tmp_path / "w", seed=0)}
    assert all(counts[name] >= 1000 for name in TARGETS), counts
    assert counts["toy_pope"] == counts["toy_steps"] == 2 * defaults["num_heldout_images"]
    assert counts["toy_multi_seq"] == defaults["num_multi_seq_rows"]
    assert all(counts[name] < 200 for name in GUARDS), counts
    assert counts["toy_multi_grid"] == defaults["num_multi_grid_rows"]
    for name in ("toy_mc", "toy_short", "toy_mmvet"):
        assert 1.5 * defaults["num_bench_images"] <= counts[name] <= 2 * defaults["num_bench_images"]
    pool = export.held_out_images(tmp_path / "w", export.POOL_BENCHMARK)
    assert len(pool) == defaults["num_heldout_images"]  # the pool's images are all distinct
    guards = export.held_out_images(tmp_path / "w")
    assert list(guards) == list(pool)[:defaults["num_bench_images"]]  # the guards: the pool's first images
    export.check_disjoint(tmp_path / "w")  # toy_steps and toy_mmvet included, now they are there


def test_one_benchmark_size_leaves_the_other_files_alone(tmp_path):
    small = {**TINY_SPLITS, "num_bench_images": 6, "num_multi_seq_rows": 20, "num_multi_grid_rows": 10}
    export.build_world(tmp_path / "a", seed=2, num_heldout_images=12, **small)
    export.build_world(tmp_path / "b", seed=2, num_heldout_images=30, **small)
    export.build_world(tmp_path / "c", seed=2, num_heldout_images=12, **{**small, "num_multi_seq_rows": 40})
    same = ["seeds/llava.json", "train/llava.json", "corpus.txt", "benchmarks/toy_mc.tsv", "benchmarks/toy_short.tsv",
            "benchmarks/toy_multi_grid.tsv"]
    for other in ("b", "c"):
        _, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / other, same, shallow=False)
        assert not mismatch and not errors, (other, mismatch, errors)
    _, mismatch, _ = filecmp.cmpfiles(tmp_path / "a", tmp_path / "c", ["benchmarks/toy_pope.tsv"], shallow=False)
    assert not mismatch  # toy_multi_seq's size changes toy_multi_seq only
    pope_a = export.read_tsv(tmp_path / "a" / "benchmarks" / "toy_pope.tsv")
    pope_b = export.read_tsv(tmp_path / "b" / "benchmarks" / "toy_pope.tsv")
    assert pope_b[:len(pope_a)] == pope_a  # a larger pool keeps the first images and their questions


def test_train_split_asks_short_questions_with_and_without_the_suffix(tmp_path):
    export.build_world(tmp_path / "w", seed=1, num_seed_images=10, num_train_images=60, num_bench_images=4,
                       num_heldout_images=4)
    forms: dict[str, Counter] = {}
    for split in ("seeds", "train"):
        forms[split] = Counter()
        for e in json.loads((tmp_path / "w" / split / "llava.json").read_text()):
            lines = e["conversations"][0]["value"].removeprefix("<image>\n").split("\n")
            if len(lines) == 1:
                forms[split]["bare", e["conversations"][1]["value"] in ("yes", "no")] += 1
            elif lines[-1] == SHORT_ANSWER_SUFFIX:
                forms[split]["suffixed", e["conversations"][1]["value"] in ("yes", "no")] += 1
    assert not any(form == "bare" for form, _ in forms["seeds"])  # seeds keep the suffix: SeVa strips it
    train = forms["train"]
    for yes_no in (True, False):  # both forms for yes/no questions and for the other short ones
        both = train["bare", yes_no] + train["suffixed", yes_no]
        assert 0.3 * both <= train["bare", yes_no] <= 0.7 * both, train
    # Every bare question is a line of corpus.txt, so the tokenizer learned it as it is asked.
    corpus = set((tmp_path / "w" / "corpus.txt").read_text().splitlines())
    bare = {e["conversations"][0]["value"].removeprefix("<image>\n")
            for e in json.loads((tmp_path / "w" / "train" / "llava.json").read_text())}
    assert {q for q in bare if "\n" not in q} <= corpus


def test_world_json_holds_the_format_version(tmp_path):
    export.build_world(tmp_path / "w", seed=0, **TINY_SPLITS, num_bench_images=2, num_heldout_images=2)
    manifest = json.loads((tmp_path / "w" / "world.json").read_text())
    assert manifest["format_version"] == export.FORMAT_VERSION and export.world_is_current(tmp_path / "w")
    (tmp_path / "w" / "world.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "format_version"}))
    assert not export.world_is_current(tmp_path / "w")  # a world built before the key existed
    assert not export.world_is_current(tmp_path / "missing")


@pytest.fixture
def tiny_demo(monkeypatch):
    """prepare_inputs with a tiny world and a stand-in trainer (writes config.json); counts builds."""
    import visalign.toyworld

    built: list[Path] = []

    def build_world(out, *, seed):
        built.append(Path(out))
        return export.build_world(out, seed=seed, **TINY_SPLITS, num_bench_images=4, num_heldout_images=6,
                                  num_multi_seq_rows=8, num_multi_grid_rows=4)

    def train_base_model(world, out, *, steps, seed):
        Path(out).mkdir(parents=True)
        (Path(out) / "config.json").write_text(json.dumps({"world": str(world), "steps": steps}))
        return Path(out)

    monkeypatch.setattr(visalign.toyworld, "build_world", build_world)
    monkeypatch.setattr(visalign.toyworld, "train_base_model", train_base_model)
    return built


def test_prepare_inputs_rebuilds_a_world_of_another_format_version(tmp_path, tiny_demo):
    from visalign.demo import prepare_inputs

    world, model = prepare_inputs(tmp_path, 0, 5, {})
    assert tiny_demo == [world] and (model / "config.json").is_file()
    assert model.name == f"base-model-0-5-v{export.FORMAT_VERSION}"  # an old world's base model is not reused
    assert (world / "benchmarks" / "toy_steps.tsv").is_file()
    assert prepare_inputs(tmp_path, 0, 5, {}) == (world, model) and len(tiny_demo) == 1  # current: reused
    manifest = json.loads((world / "world.json").read_text())
    (world / "world.json").write_text(json.dumps({**manifest, "format_version": export.FORMAT_VERSION - 1}))
    (world / "benchmarks" / "toy_steps.tsv").write_text("stale\n")  # an old world's file, kept when present
    timings: dict[str, float] = {}
    assert prepare_inputs(tmp_path, 0, 5, timings) == (world, model)
    assert len(tiny_demo) == 2 and "build toy world" in timings and export.world_is_current(world)
    assert export.read_tsv(world / "benchmarks" / "toy_steps.tsv")[0]["answer_type"]  # rewritten for the new world
