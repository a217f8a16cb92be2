"""The toy world's judge-scored benchmark, and a stand-in judge that grades it.

    benchmarks/toy_mmvet.tsv    MM-Vet's format: open questions, answers with <AND>, categories
                                named by MM-Vet's capabilities ("rec", "rec,spat", "rec,math")

Its questions are about toy_short's held-out images (never a train image): which shapes there are
(every one must be named: "circle <AND> square"), where an object is ("top left"), how many
shapes there are. The file stem holds "mmvet", so evaluate scores it as MM-Vet, with a judge.

`ToyJudge` is a scripted stand-in for a judge model, NOT a model: it reads the ground truth and
the prediction out of VLMEvalKit's MM-Vet prompt (its last line) and answers the share of the
<AND> parts the prediction names (any part for <OR>), as the prompt's own examples grade; for a
LLaVA-Bench prompt it answers "10 s" with s from the same overlap. `serve_toy_judge` puts it
behind a local OpenAI-compatible HTTP endpoint, so the demo and the tests exercise the real judge
path (the endpoint client, retries, the cache) without a judge model on a CPU machine.
"""

from __future__ import annotations

import csv
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from visalign.toyworld import world as W

MMVET_BENCHMARK = "toy_mmvet"
QUESTIONS_PER_IMAGE = 2
TOY_JUDGE_MODEL = "toyworld-judge-standin"


def _questions(scene: W.Scene, i: int, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """(question, MM-Vet style answer, category), two kinds per image in turn."""
    kinds = W.rotate(("shapes", "where", "count"), i)[:QUESTIONS_PER_IMAGE]
    out = []
    for kind in kinds:
        if kind == "shapes":
            names = sorted({s.shape for s in scene.shapes})
            out.append(("Which shapes are in the image? Name every kind.", " <AND> ".join(names), "rec"))
        elif kind == "where":
            s = scene.shapes[int(rng.integers(len(scene.shapes)))]
            same = [t for t in scene.shapes if t.obj == s.obj]
            if len(same) == 1:
                out.append((f"Where is the {s.colour} {s.shape}?", s.cell, "rec,spat"))
        else:
            out.append(("How many shapes are there?", str(len(scene.shapes)), "rec,math"))
    return out


def write_judged_data(world_dir: str | Path, *, seed: int = 0) -> int:
    """benchmarks/toy_mmvet.tsv for a built world (kept when present); its row count."""
    from visalign.toyworld.export import TSV_COLUMNS, held_out_images, read_tsv

    world = Path(world_dir)
    path = world / "benchmarks" / f"{MMVET_BENCHMARK}.tsv"
    if path.exists():
        return len(read_tsv(path))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 5]))
    by_image = held_out_images(world)
    n = 0
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(TSV_COLUMNS)
        for i, (b64, scene) in enumerate(by_image.items()):
            for question, answer, category in _questions(scene, i, rng):
                writer.writerow([n, b64, question, answer, category])
                n += 1
    tmp.replace(path)
    return n


# ---- the stand-in judge ------------------------------------------------------------------------

def _words(text: str) -> str:
    return " " + " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split()) + " "


def _overlap(truth: str, prediction: str) -> float:
    """The share of <AND> parts named in the prediction (as whole words); 1.0 if any <OR> part is."""
    pred = _words(prediction)
    if "<OR>" in truth:
        return float(any(_words(p) in pred for p in truth.split("<OR>") if p.strip()))
    parts = [p for p in truth.split("<AND>") if p.strip()]
    return sum(_words(p) in pred for p in parts) / len(parts) if parts else 0.0


class ToyJudge:
    """A scripted stand-in for a judge model's scores (see the module docstring); not a model."""

    def answer(self, prompt: str, system: str | None = None) -> str:
        if "[Assistant 2]" in prompt:  # LLaVA-Bench: "reference prediction", 1-10
            ref = re.search(r"\[Assistant 1\]\n(.*?)\n\n\[End of Assistant 1\]", prompt, re.S)
            pred = re.search(r"\[Assistant 2\]\n(.*?)\n\n\[End of Assistant 2\]", prompt, re.S)
            words = " <AND> ".join(set(re.findall(r"[a-z]+", ref.group(1).lower()))) if ref else ""
            score = 1 + round(9 * _overlap(words, pred.group(1) if pred else "")) if words else 1
            return f"10 {score}\nThe stand-in compares the words of both answers."
        last = prompt.rstrip("\n").splitlines()[-1]  # "question | ground truth | prediction | "
        cells = [c.strip() for c in last.split(" | ")]
        if len(cells) < 3:
            return "I cannot grade this."
        return f"{round(_overlap(cells[1], cells[2]), 1):.1f}"


def serve_toy_judge(host: str = "127.0.0.1", port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """The stand-in behind POST {url}/chat/completions, in a daemon thread; (server, url)."""
    judge = ToyJudge()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet: one line per request would drown the demo's output
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            system = next((m["content"] for m in body["messages"] if m["role"] == "system"), None)
            content = body["messages"][-1]["content"]
            text = content if isinstance(content, str) else "".join(
                c.get("text", "") for c in content if c.get("type") == "text")
            answer = judge.answer(text, system)
            data = json.dumps({"id": "toy", "object": "chat.completion", "created": 0, "model": body.get("model"),
                               "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": answer}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}/v1"
