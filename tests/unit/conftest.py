"""Tiny assets for the stage tests: an untrained tiny LLaVA and a handful of seed images."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

# The unit tests sit in one folder per package (stages/, mia_dpo/, ...); their shared helpers
# (assets.py, verifier_standin.py) sit here.
sys.path.insert(0, str(Path(__file__).parent))

from assets import COLOURS, CORPUS, draw  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from visalign.toyworld.model import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("tiny_model"), CORPUS * 5, seed=0)


@pytest.fixture
def llava_seeds(tmp_path) -> Path:
    """A LLaVA-665k style JSON: 8 images x 3 questions, a corrupt image, a malformed row."""
    (tmp_path / "images").mkdir()
    rows = []
    for i in range(8):
        colour = COLOURS[i % 4]
        draw(colour).save(tmp_path / "images" / f"{i}.png")
        turns = []
        for q, a in (("What colour is the circle?", colour), ("How many shapes are there?", "1"),
                     ("Is there a red circle?", "yes" if colour == "red" else "no")):
            turns += [{"from": "human", "value": f"<image>\n{q}\nAnswer the question using a single word or phrase."},
                      {"from": "gpt", "value": a}]
        rows.append({"id": f"img{i}", "image": f"images/{i}.png", "conversations": turns})
    (tmp_path / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rows.append({"id": "corrupt", "image": "images/corrupt.png",
                 "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "x"}]})
    rows.append({"id": "broken", "image": "images/0.png"})  # no conversations
    rows.append({"id": "text-only", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]})
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(rows))
    return path


@pytest.fixture(scope="session")
def served_tiny_model(tiny_model, tmp_path_factory):
    """The tiny model behind a real OpenAI-compatible server: `transformers serve` on CPU.

    Yields (base_url, model_name, process). ~20 s to start; the tests that need an endpoint share it."""
    import os
    import shutil
    import socket
    import subprocess
    import time
    import urllib.request

    exe = shutil.which("transformers", path=str(Path(sys.executable).parent)) or "transformers"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hub = tmp_path_factory.mktemp("hf_hub")  # /v1/models fails unless the hub cache exists
    log = open(tmp_path_factory.mktemp("serve") / "serve.log", "w")
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([exe, "serve", str(tiny_model), "--host", "127.0.0.1", "--port", str(port),
                             "--device", "cpu"], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"transformers serve did not come up; see {log.name}") from None
            time.sleep(0.5)
    yield url + "/v1", str(tiny_model), proc
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
