"""The one schema every CoLLM dataset uses, as `datasets.Features`.

Benchmarks (CIRR, CIRCO, Fashion-IQ, and the synthetic world's benchmarks) publish two configs:
`queries` (reference image + modification text -> target ids) and `gallery` (the images ranked).
Triplet training data (MTCIR) publishes `triplets` plus `images`, so every image is stored once.
Pre-training data publishes image-caption `pairs`. Every id is a string.

Example:
    >>> from collm_hf.data.schema import queries_features, GALLERY_FEATURES
    >>> sorted(queries_features("cirr"))[:3]
    ['modification_text', 'query_id', 'reference_id']
"""

from datasets import Features, Image, List, Value

# Config names, shared by the builders, the writer's card and the readers.
QUERIES_CONFIG = "queries"
QUERIES_REFINED_CONFIG = "queries_refined"
GALLERY_CONFIG = "gallery"
TRIPLETS_CONFIG = "triplets"
IMAGES_CONFIG = "images"
PAIRS_CONFIG = "pairs"

# The columns every benchmark's `queries` config has, in this order.
_BASE_QUERY_COLUMNS = {
    "query_id": Value("string"),  # the source's own id where it has one (CIRR `pairid`, CIRCO `id`)
    "reference_id": Value("string"),
    "reference_image": Image(),
    "modification_text": Value("string"),
    "target_ids": List(Value("string")),  # empty where the labels are closed (test splits)
}

# Extra query columns per benchmark style.
_EXTRA_QUERY_COLUMNS = {
    "generic": {},
    "cirr": {"subset_ids": List(Value("string"))},  # the raw six `img_set.members`, reference included
    "circo": {"shared_concept": Value("string"), "semantic_aspects": List(Value("string"))},
    "fashioniq": {"captions": List(Value("string")), "category": Value("string")},
}

BENCHMARKS = tuple(name for name in _EXTRA_QUERY_COLUMNS if name != "generic")

GALLERY_FEATURES = Features({"image_id": Value("string"), "image": Image()})
FASHIONIQ_GALLERY_FEATURES = Features({"image_id": Value("string"), "image": Image(), "category": Value("string")})

TRIPLETS_FEATURES = Features(
    {
        "id": Value("string"),
        "reference_id": Value("string"),
        "target_id": Value("string"),
        "modifications": List(Value("string")),  # several texts per pair (MTCIR: 5.18 on average)
        "direction": Value("string"),  # optional: "forward" / "backward" where the source says; else null
        "category": Value("string"),  # optional: modification category where the source says; else null
    }
)
IMAGES_FEATURES = Features({"image_id": Value("string"), "image": Image()})
PAIRS_FEATURES = Features({"image_id": Value("string"), "image": Image(), "caption": Value("string")})



def queries_features(benchmark: str = "generic") -> Features:
    """Features of a benchmark's `queries` config.

    Args:
        benchmark: "cirr" (adds `subset_ids`), "circo" (adds `shared_concept`, `semantic_aspects`),
            "fashioniq" (adds `captions`, `category`) or "generic" (the base columns only).

    Returns:
        `datasets.Features` with `query_id`, `reference_id`, `reference_image`, `modification_text`,
        `target_ids`, then the benchmark's own columns.
    """
    if benchmark not in _EXTRA_QUERY_COLUMNS:
        raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {sorted(_EXTRA_QUERY_COLUMNS)}")
    return Features({**_BASE_QUERY_COLUMNS, **_EXTRA_QUERY_COLUMNS[benchmark]})


def queries_refined_features(benchmark: str = "generic") -> Features:
    """Features of a refined benchmark's `queries_refined` config: the `queries` columns plus `is_refined`
    (the text was rewritten) and `original_text` (the source's modification text)."""
    return Features({**queries_features(benchmark), "is_refined": Value("bool"), "original_text": Value("string")})


def gallery_features(benchmark: str = "generic") -> Features:
    """Features of a benchmark's `gallery` config (Fashion-IQ adds `category`: rank within a category only)."""
    if benchmark not in _EXTRA_QUERY_COLUMNS:
        raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {sorted(_EXTRA_QUERY_COLUMNS)}")
    return FASHIONIQ_GALLERY_FEATURES if benchmark == "fashioniq" else GALLERY_FEATURES


def benchmark_features(benchmark: str = "generic", refined: bool = False) -> dict[str, Features]:
    """All configs of a benchmark build: {"queries": ..., "gallery": ...} (+ "queries_refined" if `refined`)."""
    features = {QUERIES_CONFIG: queries_features(benchmark), GALLERY_CONFIG: gallery_features(benchmark)}
    if refined:
        features[QUERIES_REFINED_CONFIG] = queries_refined_features(benchmark)
    return features


def triplet_features() -> dict[str, Features]:
    """All configs of a triplet build: {"triplets": TRIPLETS_FEATURES, "images": IMAGES_FEATURES}."""
    return {TRIPLETS_CONFIG: TRIPLETS_FEATURES, IMAGES_CONFIG: IMAGES_FEATURES}


def image_columns(features: Features) -> list[str]:
    """Names of the top-level `Image` columns of `features`."""
    return [name for name, feature in features.items() if isinstance(feature, Image)]
