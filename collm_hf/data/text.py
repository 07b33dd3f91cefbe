"""Text conventions of the raw benchmarks."""


def join_fashioniq_captions(captions: list[str]) -> str:
    """Join Fashion-IQ's two relative captions into one modification text, the de-facto way (CLIP4Cir,
    SEARLE, docs/benchmarks.md): `f"{c0.strip('.?, ').capitalize()} and {c1.strip('.?, ')}"`.

    `capitalize()` lower-cases the rest of the first caption, as the reference code does. One caption is
    used alone (capitalised); more than two are joined with " and " after the same stripping.

    Example:
        >>> join_fashioniq_captions(["Is Blue.", "has SHORT sleeves?"])
        'Is blue and has SHORT sleeves'
    """
    if not captions:
        raise ValueError("a Fashion-IQ triplet needs at least one caption")
    first, *rest = (str(caption) for caption in captions)
    return " and ".join([first.strip(".?, ").capitalize(), *(caption.strip(".?, ") for caption in rest)])
