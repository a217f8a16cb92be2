"""`make efficacy`'s table: built from a demo summary's paired comparison, written into the README."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("efficacy", Path(__file__).parents[2] / "bench" / "efficacy.py")
efficacy = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(efficacy)


def summary(low: float, high: float) -> dict:
    entry = {"difference": (low + high) / 2, "low": low, "high": high, "p_value": 0.01, "test": "permutation"}
    return {"metrics": {"base": {"toy_pope": {"f1": 0.6, "n": 1024.0}}, "aligned": {"toy_pope": {"f1": 0.65}}},
            "paired": {"reference": "base", "models": {"aligned": {"toy_pope": {"f1": entry}}}},
            "stages": [{"name": "train", "rows_in": 300, "rows_out": 288, "seconds": 9.0}],
            "registry": {"alias": "champion"}}


def test_a_row_carries_the_targets_paired_comparison():
    row = efficacy.row_of("seva", 1, summary(0.02, 0.08), 123.4)
    assert row["target"] == "toy_pope/f1" and (row["base"], row["aligned"], row["rows"]) == (0.6, 0.65, 1024)
    assert (row["low"], row["high"], row["pairs"], row["alias"], row["improved"]) == (0.02, 0.08, 288, "champion", True)
    assert efficacy.row_of("seva", 2, summary(-0.01, 0.08), 1.0)["improved"] is False


def test_the_table_counts_improved_seeds_and_lands_between_the_readme_markers(tmp_path):
    rows = [efficacy.row_of("seva", s, summary(low, 0.08), 60.0) for s, low in enumerate((0.02, -0.01, 0.03))]
    text = efficacy.table(rows)
    assert "| seva | 0 | toy_pope/f1 | 1024 | 0.600 | 0.650 | +0.050 | [+0.020, +0.080] |" in text
    assert "seva 2 of 3 seeds" in text
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{efficacy.START}\nold table\n{efficacy.END}\nrest\n")
    efficacy.update_readme(readme, text)
    new = readme.read_text()
    assert "old table" not in new and text in new and new.startswith("intro\n") and new.endswith("rest\n")
    readme.write_text("no markers")
    with pytest.raises(SystemExit, match="markers"):
        efficacy.update_readme(readme, text)
