"""Shared inputs of the kfp.local pipeline tests: a small toy world slice and the untrained tiny
model, uploaded to the session's real S3 server."""

from __future__ import annotations

import pytest

from visalign.infra import store


@pytest.fixture(scope="module")
def toy_slice(stack, tmp_path_factory):
    """upload(name, seeds=..., benchmarks=[...], world_seed=..., steps=False, **world_sizes) -> the
    pipeline's s3:// inputs {"seeds", "benchmarks", "base_model"} under s3://BUCKET/<name>/."""
    from visalign.toyworld import build_untrained_model, build_world
    from visalign.toyworld.steps import write_step_data

    def upload(name: str, *, seeds: str, benchmarks: list[str], world_seed: int = 7, steps: bool = False,
               num_seed_images: int = 12, num_bench_images: int = 6) -> dict:
        root = tmp_path_factory.mktemp(name)
        build_world(root / "world", seed=world_seed, num_seed_images=num_seed_images, num_train_images=4,
                    num_bench_images=num_bench_images)
        if steps:  # MPO's step-by-step seeds and benchmark
            write_step_data(root / "world", seed=world_seed)
        model = build_untrained_model(root / "world", root / "model", seed=0)
        prefix = f"s3://{stack.settings.bucket}/{name}"
        store.upload_dir(root / "world" / "seeds", f"{prefix}/seeds")
        store.upload_dir(root / "world" / "benchmarks", f"{prefix}/benchmarks")
        store.upload_dir(model, f"{prefix}/model")
        return {"seeds": [f"{prefix}/seeds/{seeds}"], "benchmarks": [f"{prefix}/benchmarks/{b}" for b in benchmarks],
                "base_model": f"{prefix}/model"}

    return upload
