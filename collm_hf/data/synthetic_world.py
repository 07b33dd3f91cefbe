"""A synthetic world: seeded scenes of coloured shapes, their captions, and edits described in words.

The embedded default dataset (datasets issue, item 6; quickstart issue). Everything is a pure, deterministic
function of a seed, so the same seed always gives the same rows and images, with nothing to download.

A *scene* is a background plus 1-4 objects on a 3x3 grid; an object has a shape, a colour, a size and a
cell. A scene renders to a small RGB image (48 px by default: one grid cell = 2x2 patches of a ViT/8) and
reads as a caption ("a large red circle at the top left and a small blue square at the center on a gray
background"). An *edit* changes a scene (attribute change, object added, object removed, position change,
count change) and says so in several modification texts, from precise ("make the red circle blue") to loose
("make the red circle a different colour"); a loose text has a *family* of valid targets.

From these come, in the project's schema (`collm_hf.data.schema`):

- `pair_rows`: image-caption pairs for pre-training;
- `triplet_rows` + `image_rows`: MTCIR-style triplets, several modification texts per pair, grouped as MTCIR
  groups similar images (one reference, several edits of it);
- `cirr_rows`: a CIRR-style benchmark: one precise text per query, `subset_ids` = the raw six members of a set
  of similar images (reference, target, a sibling edit of the same attribute and three other edits);
- `circo_rows`: a CIRCO-style benchmark: one loose text per query, every rendered member of the family a
  ground truth, with hard negatives (the reference, other edits of it) and text-only matches in the gallery.

Both galleries hold distractors that match the text but not the reference (the edited object in another
scene) and the reverse (other edits of the reference). `write_world` writes them all through the datasets
writer. Example:

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


def _pick(rng, texts, k):
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


# ---------------------------------------------------------------------------------------------------------------
# Rows in the project's schema
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class WorldConfig:
    """Sizes of the synthetic world. The defaults make tens of thousands of pairs in well under a minute."""

    seed: int = 0
    image_size: int = 48
    num_pairs: int = 20000  # image-caption pairs for pre-training
    num_groups: int = 4000  # triplet groups: one reference and `edits_per_group` edits of it
    edits_per_group: int = 5
    texts_per_triplet: int = 4  # precise texts per triplet (plus the loose one where it has one)
    num_cirr_queries: int = 500  # one set of six similar images per query
    num_circo_queries: int = 300
    circo_max_targets: int = 5  # ground truths rendered per CIRCO-style query
    max_objects: int = 3  # objects in a sampled scene (edits that add one may make it one more, up to 4)
    # Training groups draw their edits in same-category twins (`edits_of(twins=True)`): "remove the circle" next
    # to "remove the square" of the same scene, so each batch holds the hard negatives a CIRR set holds. Measured
    # with the quickstart (seed 0, one thread, 800 + 2,100 steps): CoLLM recall@1 81.6 -> 85.4 and map@5 71.3 -> 72.0
    # (docs/quickstart_history.md).
    twin_edits: bool = True
    # How often the training groups draw each edit category, over `EDIT_WEIGHTS` (e.g. {"remove": 4}); the
    # benchmarks always use `EDIT_WEIGHTS`.
    training_edit_weights: dict | None = None
    # A training row also lists the loose text of a sibling edit in the same group whose family holds its target
    # ("make the red circle a different colour" on the row that makes it green): the row's texts are then all the
    # texts it answers, which the triplet collator needs to keep a valid answer out of a query's negatives
    # (`CoLLMTripletCollator.mask_shared_texts`).
    sibling_loose_texts: bool = True

    def __post_init__(self):
        unknown = sorted(set(self.training_edit_weights or {}) - set(EDITS))
        if unknown:
            raise ValueError(f"training_edit_weights names unknown edit categories {unknown}; known: {sorted(EDITS)}")

    @classmethod
    def tiny(cls, seed: int = 0) -> "WorldConfig":
        return cls(seed=seed, num_pairs=400, num_groups=80, num_cirr_queries=40, num_circo_queries=30)


def _rng(config: WorldConfig, part: str) -> random.Random:
    # One stream per part: growing one part never changes another.
    return random.Random(f"{config.seed}-{part}")


def pair_rows(config: WorldConfig):
    """Yield image-caption pairs {"image_id", "image", "caption"} for pre-training (distinct scenes)."""
    rng, seen = _rng(config, "pairs"), set()
    while len(seen) < config.num_pairs:
        scene = sample_scene(rng, max_objects=config.max_objects)
        if scene.key not in seen:
            seen.add(scene.key)
            yield {"image_id": scene.image_id, "image": render(scene, config.image_size), "caption": caption(scene)}


def triplet_scenes(config: WorldConfig):
    """Yield (triplet row, reference scene, target scene) for MTCIR-style triplets, grouped by reference."""
    rng = _rng(config, "triplets")
    for g in range(config.num_groups):
        scene = sample_scene(rng, max_objects=config.max_objects)
        edits = edits_of(rng, scene, config.edits_per_group, twins=config.twin_edits, weights=config.training_edit_weights)
        for k, edit in enumerate(edits):
            texts = _pick(rng, edit.texts, config.texts_per_triplet)
            # Loose texts: the edit's own, and a sibling's whose family holds this target (the sibling "make the
            # red circle a different colour" fits this edit's green circle too), so every row lists what it answers.
            siblings = [e for e in edits if e is not edit] if config.sibling_loose_texts else []
            fitting = [edit] + [e for e in siblings if edit.target.key in {s.key for s in e.family}]
            for loose_text in [e.loose_text for e in fitting if e.loose_text]:
                if loose_text not in texts:
                    texts.append(loose_text)
            row = {"id": f"syn-{config.seed}-{g}-{k}", "reference_id": scene.image_id, "target_id": edit.target.image_id,
                   "modifications": texts, "direction": "forward", "category": edit.category}
            yield row, scene, edit.target


def triplet_rows(config: WorldConfig):
    """Yield the `triplets` config rows."""
    for row, _, _ in triplet_scenes(config):
        yield row


def image_rows(config: WorldConfig):
    """Yield the `images` config rows: every reference and target of `triplet_rows`, once."""
    seen = set()
    for _, *scenes in triplet_scenes(config):
        for scene in scenes:
            if scene.image_id not in seen:
                seen.add(scene.image_id)
                yield {"image_id": scene.image_id, "image": render(scene, config.image_size)}


def _benchmark_part(config: WorldConfig, name: str) -> random.Random:
    return _rng(config, name)


def cirr_scenes(config: WorldConfig) -> tuple[list, dict]:
    """The CIRR-style benchmark as scenes: (queries, gallery {image_id: Scene})."""
    rng, queries, gallery = _benchmark_part(config, "cirr"), [], {}
    while len(queries) < config.num_cirr_queries:
        reference = sample_scene(rng, min_objects=2, max_objects=max(2, config.max_objects))
        main = random_edit(rng, reference)
        if main is None:
            continue
        members = [reference, main.target]
        sibling = [s for s in main.family if s.key not in {m.key for m in members}]
        if sibling:
            members.append(rng.choice(sibling))
        for edit in edits_of(rng, reference, 8):
            if len(members) == 6:
                break
            if edit.target.key not in {m.key for m in members}:
                members.append(edit.target)
        if len(members) < 6:
            continue
        distractor = text_distractor(rng, main)
        for scene in members + [distractor]:
            gallery[scene.image_id] = scene
        order = rng.sample(members, 6)
        queries.append({
            "query_id": str(len(queries)), "reference": reference, "modification_text": rng.choice(main.texts),
            "target": main.target, "subset": order, "category": main.category,
        })
    return queries, gallery


def circo_scenes(config: WorldConfig) -> tuple[list, dict]:
    """The CIRCO-style benchmark as scenes: (queries with all valid targets, gallery {image_id: Scene})."""
    rng, queries, gallery = _benchmark_part(config, "circo"), [], {}
    while len(queries) < config.num_circo_queries:
        reference = sample_scene(rng, min_objects=2, max_objects=max(2, config.max_objects))
        main = random_edit(rng, reference, loose=True)
        if main is None:
            continue
        k = min(len(main.family), rng.randint(2, config.circo_max_targets))
        targets = [main.target] + rng.sample([s for s in main.family if s.key != main.target.key], k - 1)
        negatives = [reference] + [e.target for e in edits_of(rng, reference, 3)
                                   if e.target.key not in {s.key for s in main.family}][:2]
        negatives += [text_distractor(rng, main) for _ in range(2)]
        for scene in targets + negatives:
            gallery[scene.image_id] = scene
        shared = main.subject or "scene"
        queries.append({
            "query_id": str(len(queries)), "reference": reference, "modification_text": main.loose_text,
            "family": main.family, "target": main.target, "shared_concept": shared, "category": main.category,
        })
    # Ground truths: every gallery image in the family, also one that another query put there.
    for q in queries:
        q["targets"] = [s for s in q["family"] if s.image_id in gallery]
    return queries, gallery


def cirr_rows(config: WorldConfig) -> tuple[list, list]:
    """(queries rows, gallery rows) of the CIRR-style benchmark, `queries_features("cirr")` schema."""
    queries, gallery = cirr_scenes(config)
    query_rows = [{
        "query_id": q["query_id"], "reference_id": q["reference"].image_id,
        "reference_image": render(q["reference"], config.image_size), "modification_text": q["modification_text"],
        "target_ids": [q["target"].image_id], "subset_ids": [s.image_id for s in q["subset"]],
    } for q in queries]
    return query_rows, _gallery_rows(gallery, config)


def circo_rows(config: WorldConfig) -> tuple[list, list]:
    """(queries rows, gallery rows) of the CIRCO-style benchmark, `queries_features("circo")` schema.
    `target_ids[0]` is the target the text was written for (as CIRCO's `target_img_id`)."""
    queries, gallery = circo_scenes(config)
    query_rows = []
    for q in queries:
        others = [s.image_id for s in q["targets"] if s.key != q["target"].key]
        query_rows.append({
            "query_id": q["query_id"], "reference_id": q["reference"].image_id,
            "reference_image": render(q["reference"], config.image_size), "modification_text": q["modification_text"],
            "target_ids": [q["target"].image_id] + others, "shared_concept": q["shared_concept"],
            "semantic_aspects": [ASPECTS[q["category"]]],
        })
    return query_rows, _gallery_rows(gallery, config)


def _gallery_rows(gallery: dict, config: WorldConfig) -> list:
    return [{"image_id": i, "image": render(s, config.image_size)} for i, s in sorted(gallery.items())]


# Benchmark splits: CIRR-style queries and gallery are `val`; the CIRCO-style gallery is one split shared by
# its queries, named as CIRCO's (contracts.md).
CIRR_SPLIT, CIRCO_QUERY_SPLIT, CIRCO_GALLERY_SPLIT = "val", "val", "unlabeled2017"
WORLD_PARTS = ("pairs", "mtcir", "cirr", "circo")


def write_world(output_dir, config: WorldConfig | None = None, parts=WORLD_PARTS, workers: int = 1) -> dict:
    """Write the world through the datasets writer: `<output_dir>/{pairs,mtcir,cirr,circo}`, each a dataset
    folder loadable with `datasets.load_dataset(folder, "<config>")`.

    Args:
        output_dir: parent folder of the four datasets.
        config: sizes and seed (default `WorldConfig()`).
        parts: which of "pairs", "mtcir", "cirr", "circo" to write.
        workers: write this many parts at once, in threads (each part has its own random stream, so the files are
            the same; Pillow's resizing and PNG encoding release the GIL). The quickstart's `metrics.json`
            records the time as `world_s`: 18-26 s with 2 workers on 2 CPU cores against 32-41 s with 1.

    Returns:
        {part: Path of its dataset folder}.
    """
    from pathlib import Path

    unknown = [p for p in parts if p not in WORLD_PARTS]
    if unknown:
        raise ValueError(f"unknown synthetic world part(s) {unknown}; expected some of {WORLD_PARTS}")
    if workers > 1 and len(parts) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(workers, len(parts))) as pool:
            futures = {part: pool.submit(write_world, output_dir, config, [part]) for part in parts}
            return {part: future.result()[part] for part, future in futures.items()}

    from .schema import (GALLERY_CONFIG, IMAGES_CONFIG, PAIRS_CONFIG, PAIRS_FEATURES, QUERIES_CONFIG,
                         TRIPLETS_CONFIG, benchmark_features, triplet_features)
    from .writer import write_dataset

    config = config or WorldConfig()
    root, written = Path(output_dir), {}
    card = {"license": "apache-2.0", "source": f"collm_hf.data.synthetic_world, {config}",
            "description": "A synthetic world of coloured shapes, made by collm_hf (deterministic for a seed)."}
    if "pairs" in parts:
        written["pairs"] = write_dataset(root / "pairs", {PAIRS_CONFIG: {"train": pair_rows(config)}},
                                         {PAIRS_CONFIG: PAIRS_FEATURES}, dict(card, pretty_name="Synthetic pairs"))
    if "mtcir" in parts:
        written["mtcir"] = write_dataset(
            root / "mtcir", {TRIPLETS_CONFIG: {"train": triplet_rows(config)}, IMAGES_CONFIG: {"train": image_rows(config)}},
            triplet_features(), dict(card, pretty_name="Synthetic MTCIR-style triplets"))
    if "cirr" in parts:
        queries, gallery = cirr_rows(config)
        written["cirr"] = write_dataset(
            root / "cirr", {QUERIES_CONFIG: {CIRR_SPLIT: queries}, GALLERY_CONFIG: {CIRR_SPLIT: gallery}},
            benchmark_features("cirr"), dict(card, pretty_name="Synthetic CIRR-style benchmark"))
    if "circo" in parts:
        queries, gallery = circo_rows(config)
        written["circo"] = write_dataset(
            root / "circo", {QUERIES_CONFIG: {CIRCO_QUERY_SPLIT: queries}, GALLERY_CONFIG: {CIRCO_GALLERY_SPLIT: gallery}},
            benchmark_features("circo"), dict(card, pretty_name="Synthetic CIRCO-style benchmark"))
    return written


def world_corpus() -> list:
    """Sentences that hold every word the world uses (to train a tokenizer on the world's vocabulary)."""
    rng, lines = random.Random(0), [" ".join(SHAPES), " ".join(COLOURS), " ".join(SIZES), " ".join(BACKGROUNDS)]
    lines += [" ".join(s + "s" for s in SHAPES), " ".join(POSITIONS), "Instruct: Find the image that matches the query.",
              "Query: Image: Text:"]
    for _ in range(300):
        scene = sample_scene(rng)
        lines.append(caption(scene))
        for edit in edits_of(rng, scene, 3):
            lines += edit.texts + ([edit.loose_text] if edit.loose_text else [])
    return lines


__all__ = [
    "ASPECTS", "BACKGROUNDS", "CIRCO_GALLERY_SPLIT", "CIRCO_QUERY_SPLIT", "CIRR_SPLIT", "WORLD_PARTS", "write_world", "COLOURS", "EDITS", "Edit", "Obj", "POSITIONS", "SHAPES", "SIZES", "Scene", "WorldConfig",
    "caption", "circo_rows", "circo_scenes", "cirr_rows", "cirr_scenes", "edits_of", "image_rows", "pair_rows",
    "random_edit", "refer", "render", "sample_scene", "text_distractor", "triplet_rows", "triplet_scenes", "world_corpus",
]
