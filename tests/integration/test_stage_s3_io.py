"""Stages run from the `visalign` command read s3:// inputs and write s3:// outputs (the real
SeaweedFS of the session's stack): no local folder named 's3:', and a re-run sees the bucket as it
is, not what an earlier run left in the local staging copy."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from assets import draw  # noqa: E402

from visalign import schema  # noqa: E402
from visalign.cli import main  # noqa: E402
from visalign.infra import store  # noqa: E402

pytestmark = pytest.mark.integration


def test_sample_and_augment_read_and_write_s3(stack, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VISALIGN_CACHE", str(tmp_path / "cache"))
    prefix = f"s3://{stack.settings.bucket}/tests/{uuid.uuid4().hex[:8]}"
    rows = []
    for i, colour in enumerate(("red", "blue", "green")):
        draw(colour).save(tmp_path / f"{i}.png")
        store.write_bytes(f"{prefix}/seeds/images/{i}.png", (tmp_path / f"{i}.png").read_bytes())
        rows.append({"id": str(i), "image": f"images/{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": colour}]})
    rows.append({"id": "x", "image": "../outside.png", "conversations": rows[0]["conversations"]})
    store.write_text(f"{prefix}/seeds/seeds.json", json.dumps(rows))

    assert main(["sample", "--input", f"{prefix}/seeds/seeds.json", "--output", f"{prefix}/prompts"]) == 0
    listed = [u.removeprefix(f"{prefix}/prompts/") for u in store.list_uris(f"{prefix}/prompts")]
    assert schema.PROMPTS_FILE in listed and "report.json" in listed
    assert sum(u.startswith("images/") for u in listed) == 3
    report = json.loads(store.read_text(f"{prefix}/prompts/report.json"))
    assert report["rows_out"] == 3 and report["dropped"] == {"image_outside_root": 1}
    assert main(["augment", "--prompts", f"{prefix}/prompts", "--output", f"{prefix}/views",
                 "--set", "augment.name=flip"]) == 0
    views = store.read_text(f"{prefix}/views/{schema.VIEWS_FILE}").splitlines()
    assert len(views) == 3 and store.exists(f"{prefix}/views/images")
    assert not any(p.name.startswith("s3:") for p in tmp_path.iterdir())
    # The output deleted from the bucket, then made again with fewer prompts: nothing of the first run
    # comes back from the local staging copy.
    bucket = stack.settings.bucket
    for uri in store.list_uris(f"{prefix}/prompts"):
        store.client().remove_object(bucket, store.split_s3(uri)[1])
    assert main(["sample", "--input", f"{prefix}/seeds/seeds.json", "--output", f"{prefix}/prompts",
                 "--set", "sample.num_prompts=2"]) == 0
    listed = [u.removeprefix(f"{prefix}/prompts/") for u in store.list_uris(f"{prefix}/prompts")]
    assert sum(u.startswith("images/") for u in listed) == 2
    assert len(store.read_text(f"{prefix}/prompts/{schema.PROMPTS_FILE}").splitlines()) == 2
