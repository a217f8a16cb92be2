"""toyworld base model: the same seed and steps give bit-identical weights, and training leaves the
process's torch settings (threads, deterministic flag, random state) as it found them."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from visalign.toyworld import export, sft

# Every size small; only those build_world takes (the held-out pool and multi-image row counts
# came later than the rest).
_SIZES = {"num_seed_images": 4, "num_train_images": 12, "num_bench_images": 4, "num_heldout_images": 4,
          "num_multi_seq_rows": 4, "num_multi_grid_rows": 4}
TINY = {k: v for k, v in _SIZES.items() if k in inspect.signature(export.build_world).parameters}
RUN = {"steps": 6, "batch_size": 4, "threads": 1, "log_every": 3}


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    export.build_world(out, seed=0, **TINY)
    return out


def _weights(model_dir: Path):
    from safetensors.torch import load_file

    return load_file(model_dir / "model.safetensors")


def _torch_settings():
    import torch

    return (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled())


def test_same_seed_bit_identical_other_seed_differs_settings_restored(world_dir, tmp_path):
    import torch

    before = _torch_settings()
    torch.manual_seed(123)
    expected_next = torch.rand(3)  # what the caller's random stream gives next, training or not
    torch.manual_seed(123)
    first = _weights(sft.train_base_model(world_dir, tmp_path / "a", seed=0, **RUN))
    assert _torch_settings() == before
    assert torch.equal(torch.rand(3), expected_next)
    second = _weights(sft.train_base_model(world_dir, tmp_path / "b", seed=0, **RUN))
    other = _weights(sft.train_base_model(world_dir, tmp_path / "c", seed=1, **RUN))
    assert _torch_settings() == before

    assert first.keys() == second.keys() == other.keys()
    assert [k for k in first if not torch.equal(first[k], second[k])] == []
    assert any(not torch.equal(first[k], other[k]) for k in first)
    record = json.loads((tmp_path / "a" / sft.SFT_RECORD_FILE).read_text())
    assert record["threads"] == 1 and record["deterministic"] is True


def test_deterministic_training_restores_settings_after_an_error():
    import numpy as np
    import torch

    before = _torch_settings()
    np.random.seed(7)
    expected = np.random.rand()
    np.random.seed(7)
    with pytest.raises(RuntimeError, match="boom"), sft.deterministic_training(seed=0, threads=1):
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
        raise RuntimeError("boom")
    assert _torch_settings() == before
    assert np.random.rand() == expected
