"""MIA-DPO's compose stage: collage geometry, prompt texts, distractor rules, bad input."""

import random

import pytest
from PIL import Image

from visalign import schema
from visalign.errors import EmptyResult
from visalign.mia_dpo import compose as mi
from visalign.recipes import ComposeParams
from visalign.report import read_report
from visalign.schema import Prompt


def _solid(colour, size=(60, 40)):
    return Image.new("RGB", size, colour)


@pytest.mark.parametrize("layout,count", [("1x2", 2), ("1x3", 3), ("2x2", 4), ("2x3", 6), ("3x3", 9)])
def test_grid_cells_tile_the_canvas_with_margins_and_labels_inside(layout, count):
    colours = ["red", "green", "blue", "yellow", "purple", "orange", "cyan", "magenta", "brown"]
    col = mi.grid_collage([_solid(c) for c in colours[:count]], layout, cell_size=100, margin=10)
    rows, cols = mi.GRID_LAYOUTS[layout]
    w, h = cols * 100 + (cols + 1) * 10, rows * 100 + (rows + 1) * 10
    side = max(w, h)
    assert col.image.size == (side, side)  # padded to a square
    assert len(col.cells) == len(col.labels) == count
    ox, oy = (side - w) // 2, (side - h) // 2
    for n, (x0, y0, x1, y1) in enumerate(col.cells):
        r, c = divmod(n, cols)
        assert (x0, y0) == (ox + 10 + c * 110, oy + 10 + r * 110) and (x1 - x0, y1 - y0) == (100, 100)
        lx0, ly0, lx1, ly1 = col.labels[n]
        assert x0 <= lx0 < lx1 <= x1 and y0 <= ly0 < ly1 <= y1  # the label sits inside its cell
        assert lx0 - x0 < 20 and ly0 - y0 < 20  # at the top-left
    # the image is fitted with its aspect kept (60x40 -> 100x67, white above and below)
    x0, y0, x1, y1 = col.cells[0]
    assert col.image.getpixel((x0 + 50, y0 + 50)) == (255, 0, 0)
    assert col.image.getpixel((x0 + 50, y0 + 5)) == (255, 255, 255)
    assert col.image.getpixel((x0 + 50, y1 - 3)) == (255, 255, 255)
    # margins stay white; the label is drawn (dark pixels inside its box)
    assert col.image.getpixel((x0 - 5, y0 + 50)) == (255, 255, 255)
    lx0, ly0, lx1, ly1 = col.labels[0]
    label = col.image.crop((lx0, ly0, lx1, ly1)).convert("L")
    assert label.getextrema()[0] < 100


def test_grid_refuses_the_wrong_image_count():
    with pytest.raises(ValueError, match="needs 4 images, got 3"):
        mi.grid_collage([_solid("red")] * 3, "2x2", cell_size=32, margin=4)


def test_sequence_prompt_text():
    assert mi.sequence_prompt("What colour is the circle?", 3, 2) == (
        "Image1: <image>\nImage2: <image>\nImage3: <image>\nIn Image2, what colour is the circle?")
    with pytest.raises(ValueError):
        mi.sequence_prompt("Q?", 2, 3)


def test_pic_in_pic_pastes_the_target_at_70_percent_in_the_centre():
    composite, box = mi.pic_in_pic(_solid("red", (50, 100)), _solid("blue", (200, 100)), 0.7)
    assert composite.size == (200, 100)
    x0, y0, x1, y1 = box
    assert (x1 - x0, y1 - y0) == (35, 70)  # fits 0.7 x (200, 100) = (140, 70) with aspect 1:2 kept
    assert abs((x0 + x1) / 2 - 100) <= 1 and abs((y0 + y1) / 2 - 50) <= 1
    assert composite.getpixel((100, 50)) == (255, 0, 0) and composite.getpixel((5, 5)) == (0, 0, 255)


def _seed_dir(tmp_path, n=12, sources=("a.json",), broken=()):
    d = tmp_path / "seeds"
    (d / "images").mkdir(parents=True)
    prompts = []
    for i in range(n):
        rel = f"images/{i}.png"
        if i in broken:
            (d / rel).write_bytes(b"\x89PNG\r\n\x1a\n not really")
        else:
            Image.new("RGB", (32, 32), (i * 20 % 255, 100, 50)).save(d / rel)
        prompts.append(Prompt(id=f"p{i}", images=[rel], question="What colour is the circle?",
                              source=sources[i % len(sources)], source_row=str(i), reference=f"answer {i}"))
    schema.write_rows(d / schema.PROMPTS_FILE, prompts)
    return d


def test_compose_builds_every_format_without_the_target_among_distractors(tmp_path):
    seeds = _seed_dir(tmp_path, sources=("a.json", "b.json"))
    params = ComposeParams(cell_size=32, margin=4, mix=(1.0, 1.0, 1.0), grid_layouts=("1x2", "2x2"))
    report = mi.run(prompts_dir=str(seeds), output_dir=str(tmp_path / "out"), params=params)
    rows = schema.read_rows(tmp_path / "out" / schema.PROMPTS_FILE)
    assert report.rows_out == len(rows) == 12 and set(report.extra["formats"]) == {"sequence", "grid", "pic_in_pic"}
    seed_images = {f"p{i}": f"images/{i}.png" for i in range(12)}
    for r in rows:
        m = r.meta
        target_image = seed_images[m["seed_prompt"]]
        source_of = {f"images/{i}.png": ("a.json", "b.json")[i % 2] for i in range(12)}
        assert all(source_of[s] == r.source for s in m["sources"])  # distractors from the same source
        distractors = [s for s in m["sources"] if s != target_image]
        assert len(distractors) == m["num_images"] - 1  # the target's own image is never a distractor
        assert r.reference == f"answer {m['seed_prompt'][1:]}"
        assert all((tmp_path / "out" / im).exists() for im in r.images)
        if m["format"] == "sequence":
            assert m["sources"][m["target"] - 1] == target_image and r.images == m["sources"]
            assert r.question.count("<image>") == m["num_images"] == len(r.images)
            assert r.question.endswith(f"In Image{m['target']}, what colour is the circle?")
        elif m["format"] == "grid":
            assert len(r.images) == 1 and len(m["cells"]) == m["num_images"]
            assert r.question == f"In Image{m['target']}, what colour is the circle?"
        else:
            assert r.question in [p + "what colour is the circle?" for p in params.pip_phrases]
            assert m["num_images"] == 2 and len(m["centre_box"]) == 4
    again = mi.run(prompts_dir=str(seeds), output_dir=str(tmp_path / "again"), params=params)
    assert [r.id for r in schema.read_rows(tmp_path / "again" / schema.PROMPTS_FILE)] == [r.id for r in rows]
    assert again.extra["formats"] == report.extra["formats"]  # seeded


def test_compose_skips_a_broken_distractor_and_drops_what_cannot_be_built(tmp_path):
    seeds = _seed_dir(tmp_path, n=6, broken=(5,))
    prompts = schema.read_rows(seeds / schema.PROMPTS_FILE)
    prompts.append(Prompt(id="noref", images=["images/0.png"], question="Q?", source="a.json", source_row="9"))
    schema.write_rows(seeds / schema.PROMPTS_FILE, prompts)
    # 5 images in all: 4 distractors; each target has 5 others, one of which (images/5.png) is broken
    params = ComposeParams(formats=("sequence",), mix=(1.0,), sequence_images=(5,))
    report = mi.run(prompts_dir=str(seeds), output_dir=str(tmp_path / "out"), params=params)
    d = report.to_dict()
    assert d["dropped"] == {"unreadable_image": 1, "no_reference": 1}
    assert "prompt p5" in d["drop_examples"]["unreadable_image"][0] and "'images'" in d["drop_examples"]["unreadable_image"][0]
    assert list(report.extra["unreadable_distractors"]) == ["images/5.png"]
    rows = schema.read_rows(tmp_path / "out" / schema.PROMPTS_FILE)
    assert len(rows) == report.rows_out == 5
    assert all("images/5.png" not in r.meta["sources"] for r in rows)
    # now each target has only 4 usable others: 5 images in all cannot be built
    (seeds / "images" / "4.png").write_bytes(b"broken")
    with pytest.raises(EmptyResult, match="no rows out of 7 in; dropped: 4 too_few_distractors"):
        mi.run(prompts_dir=str(seeds), output_dir=str(tmp_path / "out2"), params=params)
    saved = read_report(tmp_path / "out2")
    assert saved["dropped"]["too_few_distractors"] == 4 and saved["rows_out"] == 0
    assert "needs 4 distractors, its source has 3 usable" in saved["drop_examples"]["too_few_distractors"][0]


def test_too_few_distractor_candidates_is_a_clear_error(tmp_path):
    seeds = _seed_dir(tmp_path, n=1)
    pool = mi.ImagePool(seeds, schema.read_rows(seeds / schema.PROMPTS_FILE))
    p = Prompt(id="p0", images=["images/0.png"], question="Q?", source="a.json", source_row="1", reference="x")
    with pytest.raises(mi.TooFewDistractors, match="needs 1 distractors, its source has 0 usable"):
        pool.draw(p, 1, random.Random(0))


def test_format_mix_follows_the_weights():
    params = ComposeParams(mix=(3.0, 1.0, 0.0))
    counts = {f: 0 for f in mi.FORMATS}
    for i in range(2000):
        counts[mi.pick_format(f"p{i}", params)[0]] += 1
    assert counts["pic_in_pic"] == 0 and 0.7 < counts["sequence"] / 2000 < 0.8


def test_a_copy_of_the_target_under_another_name_is_not_a_distractor(tmp_path):
    seeds = _seed_dir(tmp_path, n=3)
    (seeds / "images" / "2.png").write_bytes((seeds / "images" / "0.png").read_bytes())  # same picture
    pool = mi.ImagePool(seeds, schema.read_rows(seeds / schema.PROMPTS_FILE))
    p0 = schema.read_rows(seeds / schema.PROMPTS_FILE)[0]
    assert [rel for rel, _ in pool.draw(p0, 1, random.Random(0))] == ["images/1.png"]
    with pytest.raises(mi.TooFewDistractors):
        pool.draw(p0, 2, random.Random(0))


def test_pic_in_pic_is_padded_to_a_square_with_the_box_moved_along(tmp_path):
    d = tmp_path / "seeds"
    (d / "images").mkdir(parents=True)
    Image.new("RGB", (40, 40), "red").save(d / "images" / "t.png")
    Image.new("RGB", (200, 100), "blue").save(d / "images" / "bg.png")
    prompts = [Prompt(id="t", images=["images/t.png"], question="Q?", source="s", source_row="1", reference="x"),
               Prompt(id="bg", images=["images/bg.png"], question="Q?", source="s", source_row="2", reference="y")]
    schema.write_rows(d / schema.PROMPTS_FILE, prompts)
    mi.run(prompts_dir=str(d), output_dir=str(tmp_path / "out"),
           params=ComposeParams(formats=("pic_in_pic",), mix=(1.0,)))
    row = next(r for r in schema.read_rows(tmp_path / "out" / schema.PROMPTS_FILE) if r.meta["seed_prompt"] == "t")
    composite = Image.open(tmp_path / "out" / row.images[0])
    assert composite.size == tuple(row.meta["canvas"]) == (200, 200)
    x0, y0, x1, y1 = row.meta["centre_box"]
    assert (x1 - x0, y1 - y0) == (70, 70) and (x0 + x1) // 2 == 100 and (y0 + y1) // 2 == 100
    assert composite.getpixel((100, 100)) == (255, 0, 0) and composite.getpixel((100, 10)) == (255, 255, 255)
    assert composite.getpixel((5, 100)) == (0, 0, 255)


def test_changed_label_size_never_reuses_a_stale_grid_file(tmp_path):
    seeds, out = _seed_dir(tmp_path, n=4), tmp_path / "out"
    grid = dict(formats=("grid",), mix=(1.0,), grid_layouts=("1x2",), cell_size=48, margin=4)
    mi.run(prompts_dir=str(seeds), output_dir=str(out), params=ComposeParams(**grid, label_font_size=6))
    mi.run(prompts_dir=str(seeds), output_dir=str(out), params=ComposeParams(**grid, label_font_size=20))
    for r in schema.read_rows(out / schema.PROMPTS_FILE):  # the second run's rows, in the same directory
        fresh = mi.grid_collage([Image.open(seeds / s) for s in r.meta["sources"]], "1x2", cell_size=48, margin=4,
                                font_size=20)
        assert Image.open(out / r.images[0]).tobytes() == fresh.image.tobytes()


def test_changed_square_canvas_never_reuses_a_stale_pic_in_pic_file(tmp_path):
    d = tmp_path / "seeds"
    (d / "images").mkdir(parents=True)
    Image.new("RGB", (40, 40), "red").save(d / "images" / "t.png")
    Image.new("RGB", (200, 100), "blue").save(d / "images" / "bg.png")
    schema.write_rows(d / schema.PROMPTS_FILE, [
        Prompt(id="t", images=["images/t.png"], question="Q?", source="s", source_row="1", reference="x"),
        Prompt(id="bg", images=["images/bg.png"], question="Q?", source="s", source_row="2", reference="y")])
    out = tmp_path / "out"
    for square in (True, False):
        mi.run(prompts_dir=str(d), output_dir=str(out),
               params=ComposeParams(formats=("pic_in_pic",), mix=(1.0,), square_canvas=square))
    row = next(r for r in schema.read_rows(out / schema.PROMPTS_FILE) if r.meta["seed_prompt"] == "t")
    assert Image.open(out / row.images[0]).size == tuple(row.meta["canvas"]) == (200, 100)


def test_distractors_come_from_the_targets_image_folder_unless_asked_otherwise(tmp_path):
    """One LLaVA-665k JSON holds several datasets (coco/, ocr_vqa/, ...): a coco target gets coco distractors."""
    seeds = _seed_dir(tmp_path, n=8)
    prompts = schema.read_rows(seeds / schema.PROMPTS_FILE)
    for p in prompts:
        p.meta["image_group"] = "coco" if int(p.source_row) % 2 else "ocr_vqa"
    coco = [p.images[0] for p in prompts if p.meta["image_group"] == "coco"]
    target = next(p for p in prompts if p.meta["image_group"] == "coco")
    pool = mi.ImagePool(seeds, prompts)
    for seed in range(5):
        picked = [rel for rel, _ in pool.draw(target, 3, random.Random(seed))]
        assert set(picked) <= set(coco) - set(target.images)
    with pytest.raises(mi.TooFewDistractors):
        pool.draw(target, 4, random.Random(0))  # only 3 other coco images
    anywhere = mi.ImagePool(seeds, prompts, group_by="source")
    assert len(anywhere.draw(target, 7, random.Random(0))) == 7


def test_sample_records_the_llava_subset_folder():
    from visalign.stages.sample import image_group

    assert image_group("coco/train2017/000000033471.jpg") == "coco"
    assert image_group("./ocr_vqa/images/1.jpg") == "ocr_vqa"
    assert image_group("1.jpg") == ""
