"""A deterministic synthetic shapes world: scenes, renders and questions with ground truth.

A scene holds 1-4 shapes, each an object (colour x shape) drawn at a size inside its own cell of
a 3x3 grid, so shapes never overlap and every answer follows from the scene alone. Every random
choice goes through a numpy Generator the caller passes in: the same seed gives the same scenes,
questions and image bytes on any machine.

Objects are not equally common, and objects that share a colour or a shape tend to appear
together (`sample_scene`). That gives POPE's three negative strategies something to measure:

- random:      any object absent from the image.
- popular:     one of the 3 absent objects most frequent across the train-side scenes.
- adversarial: one of the 3 absent objects that share a colour or a shape with a present object
               (a red square when a red circle is there: only binding colour to shape tells them
               apart), ranked by how often they co-occur with the present objects in the
               train-side scenes. POPE ranks by co-occurrence alone; requiring a shared attribute
               keeps the negative hard even where co-occurrence counts are thin.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

from visalign.recipes import SHORT_ANSWER_SUFFIX

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 70, 230),
    "yellow": (240, 200, 0),
    "purple": (140, 40, 180),
}
SHAPES = ("circle", "square", "triangle", "cross")
CELLS = ("top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right")
SIZES = {"small": 0.42, "large": 0.75}  # side of the shape as a fraction of its cell
OBJECTS: tuple[tuple[str, str], ...] = tuple(itertools.product(COLOURS, SHAPES))
MAX_SHAPES = 4
LETTERS = ("A", "B", "C", "D")
POPE_STRATEGIES = ("random", "popular", "adversarial")
MC_SUFFIX = "Answer with the option's letter from the given choices directly."
TOP_K = 3  # POPE draws its popular/adversarial negatives from the top few candidates
JITTER = 2  # shapes move up to this many steps off their cell's centre (more distinct images)


@dataclass(frozen=True)
class Shape:
    colour: str
    shape: str
    cell: str
    size: str
    jitter: tuple[int, int] = (0, 0)  # in [-JITTER, JITTER]; scaled to the room left in the cell

    @property
    def obj(self) -> tuple[str, str]:
        return (self.colour, self.shape)


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]

    @property
    def objects(self) -> set[tuple[str, str]]:
        return {s.obj for s in self.shapes}

    def to_dict(self) -> dict:
        return {"shapes": [asdict(s) for s in self.shapes]}

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        return cls(tuple(Shape(**{**s, "jitter": tuple(s["jitter"])}) for s in d["shapes"]))


@dataclass(frozen=True)
class Question:
    """One question about one scene. `answer` is the letter for multiple choice."""

    question: str  # bare question; `prompt()` adds the answer-format instruction
    answer: str
    answer_type: str  # yes_no, short or multiple_choice
    kind: str  # existence, colour, shape or count
    category: str  # POPE strategy for existence yes/no questions, else the kind
    options: tuple[str, ...] | None = None
    target: tuple[str, str] | None = None  # the object asked about, when there is one

    def prompt(self, suffix: bool = True) -> str:
        """The question as the model sees it (LLaVA-1.5's short-answer and letter formats); with
        suffix=False a yes/no or short question stays bare (as SeVa's seeds ask it)."""
        if self.options:
            return mc_prompt(self.question, self.options)
        return f"{self.question}\n{SHORT_ANSWER_SUFFIX}" if suffix else self.question


def mc_prompt(question: str, options: Iterable[str]) -> str:
    lines = [question] + [f"{letter}. {opt}" for letter, opt in zip(LETTERS, options, strict=False)]
    return "\n".join(lines) + "\n" + MC_SUFFIX


def object_name(obj: tuple[str, str]) -> str:
    return f"{obj[0]} {obj[1]}"


# ---- scenes -------------------------------------------------------------------------------

def object_prior(rng: np.random.Generator) -> np.ndarray:
    """A skewed frequency over OBJECTS (Zipf-like, order shuffled by the seed), so POPE's
    'popular' negatives differ from random ones; the exponent keeps rare objects learnable."""
    ranks = rng.permutation(len(OBJECTS))
    weights = 1.0 / np.sqrt(ranks + 1.0)
    return weights / weights.sum()


def sample_scene(rng: np.random.Generator, prior: np.ndarray, theme_prob: float = 0.5) -> Scene:
    """1-4 distinct objects in distinct cells. After the first, each object shares a colour or a
    shape with one already placed with probability `theme_prob` (real co-occurrence structure)."""
    n = int(rng.integers(1, MAX_SHAPES + 1))
    cells = rng.choice(len(CELLS), size=n, replace=False)
    chosen: list[int] = []
    for i in range(n):
        w = prior.copy()
        w[chosen] = 0.0
        if i > 0 and rng.random() < theme_prob:
            related = [j for j, o in enumerate(OBJECTS)
                       if any(o[0] == OBJECTS[c][0] or o[1] == OBJECTS[c][1] for c in chosen)]
            mask = np.zeros_like(w)
            mask[related] = 1.0
            w = w * mask if (w * mask).sum() > 0 else w
        chosen.append(int(rng.choice(len(OBJECTS), p=w / w.sum())))
    shapes = []
    for obj_i, cell_i in zip(chosen, cells, strict=True):
        colour, shape = OBJECTS[obj_i]
        size = "large" if rng.random() < 0.5 else "small"
        jitter = (int(rng.integers(-JITTER, JITTER + 1)), int(rng.integers(-JITTER, JITTER + 1)))
        shapes.append(Shape(colour, shape, CELLS[int(cell_i)], size, jitter))
    return Scene(tuple(shapes))


def render(scene: Scene, image_size: int = 64) -> Image.Image:
    """White canvas, one filled shape per occupied cell; each shape stays inside its cell."""
    img = Image.new("RGB", (image_size, image_size), "white")
    draw = ImageDraw.Draw(img)
    cell = image_size / 3
    for s in scene.shapes:
        row, col = divmod(CELLS.index(s.cell), 3)
        side = cell * SIZES[s.size]
        room = max((cell - side) / 2 - 1, 0)  # keep a pixel of white to the cell's border
        cx = (col + 0.5) * cell + room * s.jitter[0] / JITTER
        cy = (row + 0.5) * cell + room * s.jitter[1] / JITTER
        _DRAW[s.shape](draw, cx, cy, side / 2, COLOURS[s.colour])
    return img


def _circle(d: ImageDraw.ImageDraw, cx: float, cy: float, h: float, fill) -> None:
    d.ellipse([cx - h, cy - h, cx + h, cy + h], fill=fill)


def _square(d: ImageDraw.ImageDraw, cx: float, cy: float, h: float, fill) -> None:
    d.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)


def _triangle(d: ImageDraw.ImageDraw, cx: float, cy: float, h: float, fill) -> None:
    d.polygon([(cx, cy - h), (cx - h, cy + h), (cx + h, cy + h)], fill=fill)


def _cross(d: ImageDraw.ImageDraw, cx: float, cy: float, h: float, fill) -> None:
    t = h / 3
    d.rectangle([cx - h, cy - t, cx + h, cy + t], fill=fill)
    d.rectangle([cx - t, cy - h, cx + t, cy + h], fill=fill)


_DRAW: dict[str, Callable] = {"circle": _circle, "square": _square, "triangle": _triangle, "cross": _cross}


def pixel_hash(img: Image.Image) -> str:
    """Hash of the decoded pixels (not the PNG bytes), so re-encoding cannot hide a duplicate."""
    rgb = img.convert("RGB")
    return hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()


# ---- world statistics (what 'popular' and 'adversarial' rank by) ---------------------------

@dataclass(frozen=True)
class WorldStats:
    frequency: dict[tuple[str, str], int]
    cooccurrence: dict[tuple[tuple[str, str], tuple[str, str]], int]  # both orders stored

    @classmethod
    def from_scenes(cls, scenes: Iterable[Scene]) -> WorldStats:
        freq: Counter = Counter()
        co: Counter = Counter()
        for scene in scenes:
            objs = sorted(scene.objects)
            freq.update(objs)
            for a, b in itertools.permutations(objs, 2):
                co[(a, b)] += 1
        return cls(dict(freq), dict(co))

    def popular_ranking(self, candidates: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        # Ties fall back to OBJECTS order so the ranking never depends on dict order.
        return sorted(candidates, key=lambda o: (-self.frequency.get(o, 0), OBJECTS.index(o)))

    def adversarial_ranking(self, scene: Scene) -> list[tuple[str, str]]:
        present = scene.objects
        related = [o for o in OBJECTS if o not in present
                   and any(o[0] == p[0] or o[1] == p[1] for p in present)]

        def key(o):
            co = sum(self.cooccurrence.get((p, o), 0) for p in present)
            return (-co, -self.frequency.get(o, 0), OBJECTS.index(o))

        return sorted(related, key=key)

    def to_dict(self) -> dict:
        return {"frequency": {object_name(o): n for o, n in sorted(self.frequency.items())}}


# ---- questions ----------------------------------------------------------------------------

def existence_question(obj: tuple[str, str], scene: Scene, category: str) -> Question:
    return Question(f"Is there a {object_name(obj)} in the image?", "yes" if obj in scene.objects else "no",
                    "yes_no", "existence", category, target=obj)


def pope_negative(scene: Scene, strategy: str, rng: np.random.Generator, stats: WorldStats) -> tuple[str, str]:
    """An object absent from `scene`, chosen by one of POPE's strategies (module docstring)."""
    absent = [o for o in OBJECTS if o not in scene.objects]
    if strategy == "random":
        pool = absent
    elif strategy == "popular":
        pool = stats.popular_ranking(absent)[:TOP_K]
    elif strategy == "adversarial":
        pool = stats.adversarial_ranking(scene)[:TOP_K]
    else:
        raise ValueError(f"strategy={strategy!r}: unknown POPE strategy; choose one of {POPE_STRATEGIES}")
    return pool[int(rng.integers(len(pool)))]


def pope_pair(scene: Scene, strategy: str, rng: np.random.Generator, stats: WorldStats) -> list[Question]:
    """One yes (a present object) and one no (a negative): balanced by construction."""
    present = sorted(scene.objects)
    yes = present[int(rng.integers(len(present)))]
    no = pope_negative(scene, strategy, rng, stats)
    return [existence_question(yes, scene, strategy), existence_question(no, scene, strategy)]


def _unique(scene: Scene, attr: str) -> list[Shape]:
    counts = Counter(getattr(s, attr) for s in scene.shapes)
    return [s for s in scene.shapes if counts[getattr(s, attr)] == 1]


def colour_question(scene: Scene, rng: np.random.Generator) -> Question | None:
    """'What colour is the {shape}?' for a shape that occurs once; None when none does."""
    pool = _unique(scene, "shape")
    if not pool:
        return None
    s = pool[int(rng.integers(len(pool)))]
    return Question(f"What colour is the {s.shape}?", s.colour, "short", "colour", "colour", target=s.obj)


def shape_question(scene: Scene, rng: np.random.Generator) -> Question | None:
    pool = _unique(scene, "colour")
    if not pool:
        return None
    s = pool[int(rng.integers(len(pool)))]
    return Question(f"What shape is the {s.colour} object?", s.shape, "short", "shape", "shape", target=s.obj)


def count_question(scene: Scene, rng: np.random.Generator) -> Question:
    return Question("How many shapes are there?", str(len(scene.shapes)), "short", "count", "count")


SHORT_KINDS: dict[str, Callable[[Scene, np.random.Generator], Question | None]] = {
    "colour": colour_question,
    "shape": shape_question,
    "count": count_question,
}
MC_KINDS = ("colour", "shape", "count", "existence")
# What the distractors of each multiple-choice kind are drawn from.
_MC_CHOICES: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "count": tuple(str(n) for n in range(1, MAX_SHAPES + 1)),
}


def mc_question(scene: Scene, kind: str, rng: np.random.Generator) -> Question | None:
    """Four options, one correct, order shuffled; the answer is the correct option's letter.
    existence: 'Which of these objects is in the image?' with three absent objects."""
    if kind == "existence":
        present = sorted(scene.objects)
        correct = object_name(present[int(rng.integers(len(present)))])
        others = [object_name(o) for o in OBJECTS if o not in scene.objects]
        text, target = "Which of these objects is in the image?", None
    else:
        short = SHORT_KINDS[kind](scene, rng)
        if short is None:
            return None
        correct, text, target = short.answer, short.question, short.target
        others = [c for c in _MC_CHOICES[kind] if c != correct]
    picked = [others[i] for i in rng.choice(len(others), size=len(LETTERS) - 1, replace=False)]
    options = [correct, *picked]
    options = [options[i] for i in rng.permutation(len(options))]
    letter = LETTERS[options.index(correct)]
    return Question(text, letter, "multiple_choice", kind, kind, tuple(options), target)


def short_question(scene: Scene, kind: str, rng: np.random.Generator) -> Question | None:
    if kind not in SHORT_KINDS:
        raise ValueError(f"kind={kind!r}: unknown short-answer kind; choose one of {sorted(SHORT_KINDS)}")
    return SHORT_KINDS[kind](scene, rng)


def first_available(make: Callable[[Scene, str, np.random.Generator], Question | None], scene: Scene,
                    kinds: Iterable[str], rng: np.random.Generator, skip: Iterable[str] = ()) -> Question | None:
    """The first kind (in the order given, minus `skip`) that applies to the scene."""
    for kind in kinds:
        if kind in skip:
            continue
        q = make(scene, kind, rng)
        if q is not None:
            return q
    return None


def rotate(seq: tuple[str, ...], i: int) -> tuple[str, ...]:
    """Kinds in turn starting at i: cycling keeps the mix of kinds balanced across images."""
    i %= len(seq)
    return seq[i:] + seq[:i]


def text_corpus() -> list[str]:
    """Every question, prompt format and answer of the world, for the tokenizer: enumerated from
    the vocabulary (not sampled), so any seed gives the same tokenizer. A question and its suffix
    are two lines of corpus.txt, so the bare questions of the train split are in it too."""
    lines: list[str] = []
    answers = ["yes", "no", *COLOURS, *SHAPES, *_MC_CHOICES["count"], *LETTERS]
    for obj in OBJECTS:
        lines.append(f"Is there a {object_name(obj)} in the image?\n{SHORT_ANSWER_SUFFIX}")
        lines.append(f"{LETTERS[OBJECTS.index(obj) % 4]}. {object_name(obj)}")
    for shape in SHAPES:
        lines.append(f"What colour is the {shape}?\n{SHORT_ANSWER_SUFFIX}")
    for colour in COLOURS:
        lines.append(f"What shape is the {colour} object?\n{SHORT_ANSWER_SUFFIX}")
    lines.append(f"How many shapes are there?\n{SHORT_ANSWER_SUFFIX}")
    lines.append(mc_prompt("Which of these objects is in the image?", ["red circle"] * 4))
    for letter, choice in itertools.product(LETTERS, answers):
        lines.append(f"{letter}. {choice}")
    # The answer follows "ASSISTANT:" after a space; repeating it makes BPE merge " red" etc.
    lines += [f"ASSISTANT: {a}" for a in answers] * 8
    return lines
