"""Scenes of coloured shapes, their captions, and edits described in words: the synthetic world's vocabulary.

A *scene* is a background plus 1-4 objects on a 3x3 grid; an object has a shape, a colour, a size and a
cell. A scene renders to a small RGB image (48 px by default: one grid cell = 2x2 patches of a ViT/8) and
reads as a caption ("a large red circle at the top left and a small blue square at the center on a gray
background"). An *edit* changes a scene (attribute change, object added, object removed, position change,
count change) and says so in several modification texts, from precise ("make the red circle blue") to loose
("make the red circle a different colour"); a loose text has a *family* of valid targets. Everything is a pure
function of the `random.Random` it is given. `synthetic_world` turns scenes and edits into datasets.

Example:

    >>> import random
    >>> scene = sample_scene(random.Random(0))
    >>> render(scene).size
    (48, 48)
"""

import hashlib
import random
from dataclasses import dataclass, field, replace

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 90, 235),
    "yellow": (240, 215, 30), "purple": (150, 60, 200), "orange": (245, 135, 25),
}
SIZES = ("small", "large")
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
BACKGROUNDS = {"black": (25, 25, 25), "gray": (128, 128, 128), "white": (240, 240, 240)}
MAX_OBJECTS = 4

# CIRCO's semantic aspects, per edit category.
ASPECTS = {
    "colour": "direct addressing", "size": "comparative", "shape": "direct addressing",
    "background": "spatial relations & background", "add": "addition", "remove": "negation",
    "move": "spatial relations & background", "count_up": "cardinality", "count_down": "cardinality",
}


@dataclass(frozen=True, order=True)
class Obj:
    """One object: its grid cell (0-8, row-major), shape, colour and size."""

    cell: int
    shape: str
    colour: str
    size: str

    @property
    def kind(self) -> tuple:
        return (self.shape, self.colour, self.size)

    def describe(self, article: str = "a") -> str:
        return f"{article} {self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A background and a tuple of objects sorted by cell (at most one object per cell)."""

    background: str
    objects: tuple

    @property
    def key(self) -> str:
        parts = [f"{o.cell}{o.shape[0]}{o.colour[:2]}{o.size[0]}" for o in self.objects]
        return f"{self.background[:2]}:" + ".".join(parts)

    @property
    def image_id(self) -> str:
        return "syn-" + hashlib.sha1(self.key.encode()).hexdigest()[:12]

    def free_cells(self) -> list:
        used = {o.cell for o in self.objects}
        return [c for c in range(9) if c not in used]

    def with_objects(self, objects) -> "Scene":
        return Scene(self.background, tuple(sorted(objects)))


@dataclass
class Edit:
    """A change from `reference` to `target`, with its precise texts and, where some attributes stay free,
    a loose text whose valid targets are `family` (the target included)."""

    category: str
    reference: Scene
    target: Scene
    texts: list
    loose_text: str | None = None
    family: list = field(default_factory=list)
    focus: tuple = ()  # objects of the target the text talks about (for text-only distractors)
    subject: str = ""  # what reference and target share, in words (CIRCO's `shared_concept`)


# ---------------------------------------------------------------------------------------------------------------
# Scenes, images, captions
# ---------------------------------------------------------------------------------------------------------------
def random_object(rng: random.Random, cell: int) -> Obj:
    return Obj(cell, rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(SIZES))


def sample_scene(rng: random.Random, min_objects: int = 1, max_objects: int = 3, duplicate_p: float = 0.2) -> Scene:
    """A random scene; with probability `duplicate_p` two objects are identical (for count edits)."""
    n = rng.randint(min_objects, max_objects)
    cells = rng.sample(range(9), n)
    objects = [random_object(rng, c) for c in cells]
    if n >= 2 and rng.random() < duplicate_p:
        objects[1] = replace(objects[0], cell=objects[1].cell)
    return Scene(rng.choice(list(BACKGROUNDS)), tuple(sorted(objects)))


def render(scene: Scene, image_size: int = 48) -> Image.Image:
    """Draw a scene: each object centred in its grid cell; small objects fill ~45 % of a cell, large ~80 %."""
    scale = 4  # draw large, then downsample: smooth edges make shapes readable at 48 px
    size = image_size * scale
    image = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    cell = size / 3
    for obj in scene.objects:
        cx, cy = (obj.cell % 3 + 0.5) * cell, (obj.cell // 3 + 0.5) * cell
        r = cell * (0.22 if obj.size == "small" else 0.40)
        colour = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        elif obj.shape == "square":
            s = r * 0.85
            draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=colour)
        elif obj.shape == "triangle":
            draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=colour)
        else:  # diamond
            draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)
    return image.resize((image_size, image_size), Image.BILINEAR)


def _join(parts: list) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def caption(scene: Scene) -> str:
    """'a large red circle at the top left and a small blue square at the center on a gray background'."""
    parts = [f"{o.describe()} at the {POSITIONS[o.cell]}" for o in scene.objects]
    return f"{_join(parts) if parts else 'nothing'} on a {scene.background} background"


def refer(scene: Scene, obj: Obj) -> str:
    """The shortest unambiguous phrase for `obj` in `scene`: 'the circle', 'the red circle', ...'"""
    others = [o for o in scene.objects if o != obj]
    for words in ((obj.shape,), (obj.colour, obj.shape), (obj.size, obj.colour, obj.shape)):
        attrs = {"shape": obj.shape, "colour": obj.colour, "size": obj.size}
        keys = [k for k, v in attrs.items() if v in words]
        if not any(all(getattr(o, k) == attrs[k] for k in keys) for o in others):
            return "the " + " ".join(words)
    return f"the {obj.colour} {obj.shape} at the {POSITIONS[obj.cell]}"


# ---------------------------------------------------------------------------------------------------------------
# Edits: each returns an Edit (or None where it does not apply); `rng` picks the object and the new value
# ---------------------------------------------------------------------------------------------------------------
def _swap(scene: Scene, old: Obj, new: Obj) -> Scene:
    return scene.with_objects([new if o == old else o for o in scene.objects])


def pick_texts(rng, texts, k):
    return rng.sample(texts, min(k, len(texts)))


def edit_colour(rng, scene):
    obj = rng.choice(scene.objects)
    r = refer(scene, obj)
    family = [_swap(scene, obj, replace(obj, colour=c)) for c in COLOURS if c != obj.colour]
    target = rng.choice(family)
    c = next(o for o in target.objects if o.cell == obj.cell).colour
    texts = [f"make {r} {c}", f"change {r} to {c}", f"{r} should be {c}", f"paint {r} {c}", f"turn {r} {c}"]
    loose = rng.choice([f"make {r} a different colour", f"change the colour of {r}"])
    return Edit("colour", scene, target, texts, loose, family, (replace(obj, colour=c),), obj.shape)


def edit_size(rng, scene):
    obj = rng.choice(scene.objects)
    r = refer(scene, obj)
    bigger = obj.size == "small"
    new = replace(obj, size="large" if bigger else "small")
    texts = [f"make {r} {new.size}", f"make {r} {'bigger' if bigger else 'smaller'}",
             f"{r} should be {'larger' if bigger else 'smaller'}", f"{'enlarge' if bigger else 'shrink'} {r}"]
    return Edit("size", scene, _swap(scene, obj, new), texts, focus=(new,), subject=obj.shape)


def edit_shape(rng, scene):
    obj = rng.choice(scene.objects)
    r = refer(scene, obj)
    family = [_swap(scene, obj, replace(obj, shape=s)) for s in SHAPES if s != obj.shape]
    target = rng.choice(family)
    s = next(o for o in target.objects if o.cell == obj.cell).shape
    texts = [f"turn {r} into a {s}", f"make {r} a {s}", f"change {r} to a {s}", f"replace {r} with a {obj.colour} {s}"]
    loose = rng.choice([f"give {r} a different shape", f"change the shape of {r}"])
    return Edit("shape", scene, target, texts, loose, family, (replace(obj, shape=s),), f"{obj.colour} object")


def edit_background(rng, scene):
    family = [Scene(b, scene.objects) for b in BACKGROUNDS if b != scene.background]
    target = rng.choice(family)
    b = target.background
    texts = [f"change the background to {b}", f"make the background {b}", f"put it on a {b} background",
             f"use a {b} background"]
    loose = rng.choice(["change the background colour", "use a different background"])
    return Edit("background", scene, target, texts, loose, family, subject="objects")


def edit_add(rng, scene):
    free = scene.free_cells()
    if len(scene.objects) >= MAX_OBJECTS or not free:
        return None
    new = random_object(rng, rng.choice(free))
    where = POSITIONS[new.cell]
    target = scene.with_objects(scene.objects + (new,))
    texts = [f"add {new.describe()} at the {where}", f"put {new.describe()} at the {where}",
             f"there should also be {new.describe()} at the {where}", f"at the {where}, add {new.describe()}"]
    family = [scene.with_objects(scene.objects + (Obj(new.cell, new.shape, c, s),)) for c in COLOURS for s in SIZES]
    loose = rng.choice([f"add a {new.shape} at the {where}", f"put a {new.shape} at the {where}"])
    return Edit("add", scene, target, texts, loose, family, (new,), new.shape)


def edit_remove(rng, scene):
    if len(scene.objects) < 2:
        return None
    obj = rng.choice(scene.objects)
    r = refer(scene, obj)
    target = scene.with_objects([o for o in scene.objects if o != obj])
    texts = [f"remove {r}", f"take away {r}", f"delete {r}", f"get rid of {r}", f"without {r}"]
    family = [scene.with_objects([o for o in scene.objects if o != other]) for other in scene.objects]
    loose = rng.choice(["remove one of the objects", "take away any one object"])
    return Edit("remove", scene, target, texts, loose, family, subject="objects")


def edit_move(rng, scene):
    free = scene.free_cells()
    obj = rng.choice(scene.objects)
    r = refer(scene, obj)
    family = [_swap(scene, obj, replace(obj, cell=c)) for c in free]
    target = rng.choice(family)
    where = POSITIONS[next(o for o in target.objects if o.kind == obj.kind and o.cell in free).cell]
    texts = [f"move {r} to the {where}", f"put {r} at the {where}", f"{r} should be at the {where}",
             f"shift {r} to the {where}"]
    loose = rng.choice([f"move {r} somewhere else", f"put {r} in another place"])
    moved = next(o for o in target.objects if o.kind == obj.kind and o.cell in free)
    return Edit("move", scene, target, texts, loose, family, (moved,), obj.shape)


def edit_count_up(rng, scene):
    free = scene.free_cells()
    if len(scene.objects) >= MAX_OBJECTS or not free:
        return None
    obj = rng.choice(scene.objects)
    d = f"{obj.size} {obj.colour} {obj.shape}"
    family = [scene.with_objects(scene.objects + (replace(obj, cell=c),)) for c in free]
    cell = rng.choice(free)
    target = scene.with_objects(scene.objects + (replace(obj, cell=cell),))
    where = POSITIONS[cell]
    texts = [f"add another {d} at the {where}", f"one more {d}, at the {where}",
             f"make it two {d}s, the new one at the {where}", f"copy the {d} to the {where}"]
    loose = rng.choice([f"add another {d}", f"one more {d}", f"make it two {d}s"])
    return Edit("count_up", scene, target, texts, loose, family, (replace(obj, cell=cell), obj), obj.shape)


def edit_count_down(rng, scene):
    kinds = [o.kind for o in scene.objects]
    dup = [o for o in scene.objects if kinds.count(o.kind) >= 2]
    if not dup:
        return None
    keep = rng.choice(dup)
    d = f"{keep.size} {keep.colour} {keep.shape}"
    family = [scene.with_objects([o for o in scene.objects if o.kind != k.kind or o == k]) for k in dup]
    target = scene.with_objects([o for o in scene.objects if o.kind != keep.kind or o == keep])
    where = POSITIONS[keep.cell]
    texts = [f"keep only the {d} at the {where}", f"leave just one {d}, the one at the {where}",
             f"only one {d}, at the {where}"]
    loose = rng.choice([f"leave just one {d}", f"only one {d}"])
    return Edit("count_down", scene, target, texts, loose, family, (keep,), keep.shape)


EDITS = {
    "colour": edit_colour, "size": edit_size, "shape": edit_shape, "background": edit_background, "add": edit_add,
    "remove": edit_remove, "move": edit_move, "count_up": edit_count_up, "count_down": edit_count_down,
}
# How often each category is drawn (MTCIR: attribute changes most, then added / removed objects).
EDIT_WEIGHTS = {"colour": 3, "size": 1, "shape": 2, "background": 1, "add": 2, "remove": 2, "move": 2,
                "count_up": 1, "count_down": 1}


def random_edit(rng: random.Random, scene: Scene, loose: bool = False, exclude=(), weights: dict | None = None) -> Edit | None:
    """One random applicable edit of `scene` (with a loose text and >= 2 valid targets if `loose`); `weights`
    replaces some of `EDIT_WEIGHTS` (how often each category is drawn)."""
    names = [n for n in EDITS if n not in exclude]
    table = {**EDIT_WEIGHTS, **(weights or {})}
    weights = [table[n] for n in names]
    for _ in range(20):
        edit = EDITS[rng.choices(names, weights)[0]](rng, scene)
        if edit is not None and edit.target != scene and (not loose or len(edit.family) >= 2):
            return edit
    return None


def edits_of(rng: random.Random, scene: Scene, n: int, loose: bool = False, twins: bool = False,
             weights: dict | None = None) -> list:
    """Up to `n` edits of `scene` with distinct targets (a group of similar images, as MTCIR groups).

    With `twins`, each edit drawn brings, where the scene allows one, a second edit of the same category with
    another target (the other object removed, another colour of the same object, ...): the hardest negatives a
    query meets, as a CIRR set holds "a sibling edit of the same attribute" next to its target.
    """
    edits, seen = [], {scene.key}
    for _ in range(n * 4):
        edit = random_edit(rng, scene, loose, weights=weights)
        if edit is None or edit.target.key in seen:
            continue
        drawn = [edit]
        for _ in range(10 if twins else 0):
            twin = EDITS[edit.category](rng, scene)
            if twin is not None and twin.target.key not in seen | {scene.key, edit.target.key}:
                drawn.append(twin)
                break
        for e in drawn[: n - len(edits)]:
            seen.add(e.target.key)
            edits.append(e)
        if len(edits) == n:
            break
    return edits


def text_distractor(rng: random.Random, edit: Edit) -> Scene:
    """A scene that matches the modification text alone, not the reference: the edited objects (or the new
    background) in otherwise random surroundings."""
    for _ in range(20):
        focus = list(edit.focus)
        cells = [c for c in range(9) if c not in {o.cell for o in focus}]
        others = [random_object(rng, c) for c in rng.sample(cells, rng.randint(0 if focus else 1, 2))]
        background = edit.target.background if edit.category == "background" else rng.choice(list(BACKGROUNDS))
        scene = Scene(background, tuple(sorted(focus + others)))
        if scene.key not in {edit.reference.key, edit.target.key}:
            return scene
    return scene


__all__ = [
    "ASPECTS",
    "BACKGROUNDS",
    "COLOURS",
    "EDITS",
    "EDIT_WEIGHTS",
    "Edit",
    "MAX_OBJECTS",
    "Obj",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "Scene",
    "caption",
    "pick_texts",
    "edits_of",
    "random_edit",
    "random_object",
    "refer",
    "render",
    "sample_scene",
    "text_distractor",
]
