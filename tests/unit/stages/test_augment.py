"""The augment stage: SeVa's diffusion noise, the pixel recipes, the registry and run()."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from visalign import schema
from visalign.errors import EmptyResult, InputError
from visalign.recipes import AugmentParams
from visalign.report import read_report
from visalign.stages import augment
from visalign.stages.augment_pixel import AUTOAUGMENT_OPS, IMAGENET_POLICY, PIXEL_RECIPES, rrc_box

PIXEL_NAMES = sorted(PIXEL_RECIPES)


def textured(width: int = 96, height: int = 72, seed: int = 0) -> Image.Image:
    """Noise plus a gradient: every flip, crop, colour or blur change shows in the pixels."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(height, width, 3)).astype(np.float32)
    arr[..., 0] = 0.5 * arr[..., 0] + np.linspace(0, 127, width)[None, :]
    return Image.fromarray(arr.astype(np.uint8), "RGB")


# ---- diffusion noise --------------------------------------------------------------------------

def test_schedule_matches_seva_values():
    abar = augment.diffusion_schedule(1000, 1e-5, 5e-3)
    assert abar.shape == (1000,)
    assert math.sqrt(abar[500]) == pytest.approx(0.863, abs=5e-4)
    assert math.sqrt(abar[800]) == pytest.approx(0.467, abs=5e-4)
    assert torch.all(abar[1:] < abar[:-1])  # noise only grows with t


def test_noise_is_deterministic_per_seed_and_keeps_shape_dtype():
    x0 = torch.randn(2, 3, 8, 8, dtype=torch.bfloat16)
    a = augment.add_diffusion_noise(x0, step=500, seed=7)
    b = augment.add_diffusion_noise(x0, step=500, seed=7)
    c = augment.add_diffusion_noise(x0, step=500, seed=8)
    assert a.shape == x0.shape and a.dtype == x0.dtype and a.device == x0.device
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_noise_does_not_depend_on_a_batch_dimension():
    # rollout may replay a view on (3, H, W) or on its prompt's (1, 3, H, W) slice
    x0 = torch.randn(3, 8, 8)
    assert torch.equal(augment.add_diffusion_noise(x0, 800, 3),
                       augment.add_diffusion_noise(x0[None], 800, 3)[0])


@pytest.mark.parametrize("step", [500, 800])
def test_noise_statistics_for_a_zero_image(step):
    x0 = torch.zeros(200_000)
    xt = augment.add_diffusion_noise(x0, step=step, seed=0)
    expected_std = math.sqrt(1 - float(augment.diffusion_schedule()[step]))
    assert abs(xt.mean().item()) < 0.01
    assert xt.std().item() == pytest.approx(expected_std, rel=0.01)


def test_noise_scales_the_clean_signal_by_sqrt_abar():
    x0 = torch.full((100_000,), 2.0)
    xt = augment.add_diffusion_noise(x0, step=800, seed=1)
    assert xt.mean().item() == pytest.approx(2.0 * 0.467, abs=0.01)


def test_noise_rejects_bad_step_and_uint8():
    with pytest.raises(ValueError, match="step=1000"):
        augment.add_diffusion_noise(torch.zeros(3), step=1000, seed=0)
    with pytest.raises(TypeError, match="normalised float"):
        augment.add_diffusion_noise(torch.zeros(3, dtype=torch.uint8), step=10, seed=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_noise_is_the_same_on_gpu():
    x0 = torch.randn(3, 16, 16)
    cpu = augment.add_diffusion_noise(x0, 800, 5)
    gpu = augment.add_diffusion_noise(x0.cuda(), 800, 5)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu)


def test_apply_to_pixel_values_replays_a_tensor_view():
    params = augment.AUGMENTATIONS["diffusion"].view_params(AugmentParams(diffusion_step=500))
    view = schema.View(id="v", prompt_id="p", name="diffusion", space="tensor", seed=11, params=params)
    x0 = torch.randn(1, 3, 8, 8)
    assert torch.equal(augment.apply_to_pixel_values(x0, view), augment.add_diffusion_noise(x0, 500, 11))
    flip = schema.View(id="w", prompt_id="p", name="flip", space="pixel", seed=1, images=["images/w_0.png"])
    with pytest.raises(ValueError, match="pixel-space"):
        augment.apply_to_pixel_values(x0, flip)


# ---- pixel recipes ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", PIXEL_NAMES)
def test_pixel_recipe_keeps_size_changes_pixels_and_is_seeded(name):
    img = textured()
    out = augment.augment_image(img, name, seed=3)
    assert out.size == img.size and out.mode == "RGB"
    assert not np.array_equal(np.asarray(out), np.asarray(img))
    assert np.array_equal(np.asarray(out), np.asarray(augment.augment_image(img, name, seed=3)))


@pytest.mark.parametrize("name", [n for n in PIXEL_NAMES if n != "flip"])  # flip has no randomness
def test_pixel_recipe_depends_on_the_seed(name):
    img = textured()
    outs = {np.asarray(augment.augment_image(img, name, seed=s)).tobytes() for s in range(5)}
    assert len(outs) > 1


def test_flip_mirrors_the_image():
    img = textured()
    assert np.array_equal(np.asarray(augment.augment_image(img, "flip", 0)), np.asarray(img)[:, ::-1])


def test_autoaugment_policy_table_is_torchvisions_imagenet_policy():
    assert len(IMAGENET_POLICY) == 25
    assert all(len(sub) == 2 for sub in IMAGENET_POLICY)
    used = {op for sub in IMAGENET_POLICY for op, _, _ in sub}
    assert used <= set(AUTOAUGMENT_OPS)
    assert IMAGENET_POLICY[0] == (("Posterize", 0.4, 8), ("Rotate", 0.6, 9))


@pytest.mark.parametrize("op", sorted(AUTOAUGMENT_OPS))
def test_every_autoaugment_op_keeps_the_size(op):
    img = textured()
    assert AUTOAUGMENT_OPS[op](img, 5.0 if op in ("Posterize",) else 0.2).size == img.size


def test_random_resized_crop_box_stays_inside_and_falls_back_to_a_centre_crop():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = rrc_box(120, 80, rng)
        assert 0 <= top and 0 <= left and top + h <= 80 and left + w <= 120 and h > 0 and w > 0
    # a 10:1 strip cannot fit any sampled box with scale >= 0.99: centre crop at ratio 4/3
    assert rrc_box(1000, 100, rng, scale=(0.99, 1.0)) == (0, 433, 100, 133)


# ---- registry ---------------------------------------------------------------------------------

def test_registry_lists_every_augmentation_once_with_its_space():
    assert sorted(augment.AUGMENTATIONS) == sorted(
        ["diffusion", "flip", "random_resized_crop", "autoaugment", "mocov2", "simclr", "byol"])
    assert {n: a.space for n, a in augment.AUGMENTATIONS.items()} == {
        "diffusion": "tensor", **{n: "pixel" for n in PIXEL_NAMES}}
    assert all(a.name == n and a.description for n, a in augment.AUGMENTATIONS.items())


def test_recipes_validate_against_the_same_names_as_the_registry():
    """recipes/registry.py lists the names for validation (recipes import no stage); they must match."""
    from visalign.recipes.registry import AUGMENTATION_NAMES

    assert sorted(AUGMENTATION_NAMES) == sorted(augment.AUGMENTATIONS)


def test_unknown_name_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown augmentation 'cutout'.*diffusion"):
        augment.get("cutout")
    with pytest.raises(ValueError, match="autoaugment"):
        augment.augment_image(textured(), "cutout", 0)
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment.run(prompts_dir=str(tmp_path), output_dir=str(tmp_path / "o"), params=AugmentParams(name="cutout"))


def test_view_seed_is_stable_and_per_prompt():
    assert augment.view_seed(0, "abc") == augment.view_seed(0, "abc")
    assert augment.view_seed(0, "abc") != augment.view_seed(0, "abd")
    assert augment.view_seed(0, "abc") != augment.view_seed(1, "abc")
    assert 0 <= augment.view_seed(123, "x") < 2**31


# ---- the stage --------------------------------------------------------------------------------

def make_prompts(root, n_good: int = 3, corrupt: bool = True) -> list[schema.Prompt]:
    (root / "img").mkdir(parents=True)
    prompts = []
    for i in range(n_good):
        textured(64, 48, seed=i).save(root / f"img/{i}.png")
        prompts.append(schema.Prompt(id=f"p{i}", images=[f"img/{i}.png"], question=f"q{i}?",
                                     source="seeds.json", source_row=str(i)))
    if corrupt:
        (root / "img/bad.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
        prompts.append(schema.Prompt(id="pbad", images=["img/bad.jpg"], question="q?",
                                     source="seeds.json", source_row="bad"))
    schema.write_rows(root / schema.PROMPTS_FILE, prompts)
    return prompts


@pytest.mark.parametrize("name", ["flip", "byol"])
def test_run_pixel_space_writes_views_and_images_and_drops_a_corrupt_image(tmp_path, name):
    make_prompts(tmp_path / "in")
    out = tmp_path / "out"
    report = augment.run(prompts_dir=str(tmp_path / "in"), output_dir=str(out), params=AugmentParams(name=name))

    views = schema.read_rows(out / schema.VIEWS_FILE)
    assert [v.prompt_id for v in views] == ["p0", "p1", "p2"]
    for v in views:
        assert v.space == "pixel" and v.name == name and v.params == {}
        assert v.seed == augment.view_seed(0, v.prompt_id)
        assert v.id == schema.stable_id(v.prompt_id, name, {}, v.seed)
        (path,) = v.images
        assert path.startswith("images/") and Image.open(out / path).size == (64, 48)
    saved = json.loads((out / schema.REPORT_FILE).read_text())
    assert saved == read_report(out)
    assert (saved["rows_in"], saved["rows_out"], saved["dropped"]) == (4, 3, {"unreadable_image": 1})
    assert "bad.jpg" in saved["drop_examples"]["unreadable_image"][0]
    assert "row 4" in saved["drop_examples"]["unreadable_image"][0]
    assert (saved["augmentation"], saved["space"]) == (name, "pixel")
    assert report.rows_out == 3


def test_run_is_reproducible_and_independent_of_row_order(tmp_path):
    prompts = make_prompts(tmp_path / "in", corrupt=False)
    augment.run(prompts_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "a"), params=AugmentParams(name="simclr"))
    schema.write_rows(tmp_path / "in" / schema.PROMPTS_FILE, prompts[::-1])
    augment.run(prompts_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "b"), params=AugmentParams(name="simclr"))
    a = {v.prompt_id: v for v in schema.read_rows(tmp_path / "a" / schema.VIEWS_FILE)}
    b = {v.prompt_id: v for v in schema.read_rows(tmp_path / "b" / schema.VIEWS_FILE)}
    assert a == b
    for v in a.values():
        assert (tmp_path / "a" / v.images[0]).read_bytes() == (tmp_path / "b" / v.images[0]).read_bytes()


def test_run_tensor_space_records_the_noise_without_images(tmp_path):
    make_prompts(tmp_path / "in")
    out = tmp_path / "out"
    params = AugmentParams(name="diffusion", diffusion_step=500, seed=4)
    report = augment.run(prompts_dir=str(tmp_path / "in"), output_dir=str(out), params=params)
    views = schema.read_rows(out / schema.VIEWS_FILE)
    assert len(views) == 3 and report.dropped == {"unreadable_image": 1}
    expected = {"step": 500, "timesteps": 1000, "beta_start": 1e-5, "beta_end": 5e-3}
    for v in views:
        assert v.space == "tensor" and v.images is None and v.params == expected
        assert v.seed == augment.view_seed(4, v.prompt_id)
    assert not (out / augment.IMAGES_DIR).exists()
    assert report.to_dict()["space"] == "tensor"


def test_run_on_empty_input_fails_after_writing_its_report(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / schema.PROMPTS_FILE).write_text("")
    with pytest.raises(EmptyResult, match="augment: no rows out of 0 in"):
        augment.run(prompts_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out"), params=AugmentParams())
    saved = read_report(tmp_path / "out")
    assert saved["rows_in"] == saved["rows_out"] == 0
    assert any("no prompts" in w for w in saved["warnings"])
    assert schema.read_rows(tmp_path / "out" / schema.VIEWS_FILE) == []


def test_run_drops_a_prompt_without_images_and_rejects_bad_params(tmp_path):
    (tmp_path / "in").mkdir()
    schema.write_rows(tmp_path / "in" / schema.PROMPTS_FILE, [
        schema.Prompt(id="t", images=[], question="text only?", source="s", source_row="0")])
    with pytest.raises(EmptyResult, match="1 no_image"):
        augment.run(prompts_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out"), params=AugmentParams())
    assert read_report(tmp_path / "out")["dropped"] == {"no_image": 1}
    with pytest.raises(ValueError, match="step=1000"):
        augment.run(prompts_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "o2"),
                    params=AugmentParams(diffusion_step=1000))
    with pytest.raises(InputError, match="sample stage"):
        augment.run(prompts_dir=str(tmp_path / "nowhere"), output_dir=str(tmp_path / "o3"), params=AugmentParams())


def test_cli_runs_the_stage(tmp_path):
    from visalign.cli import main

    make_prompts(tmp_path / "in", corrupt=False)
    rc = main(["augment", "--prompts", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
               "--name", "flip", "--seed", "5"])
    assert rc == 0
    views = schema.read_rows(tmp_path / "out" / schema.VIEWS_FILE)
    assert [v.name for v in views] == ["flip"] * 3
    assert views[0].seed == augment.view_seed(5, views[0].prompt_id)
