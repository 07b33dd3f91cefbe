"""`synthesis_overhead` (triplet synthesis in a pair pre-training step) and `quickstart_eager_speedup` (the
quickstart's training step with sdpa against eager attention)."""

import itertools


from .harness import interleaved_medians


def synthesis_benchmark(model, processor, batch_size: int = 16, steps: int = 3, seed: int = 0) -> dict:
    """`synthesis_overhead` through the training code's `measure_synthesis_overhead`, on synthetic-world pairs."""
    from ...training.collators import CoLLMPairCollator
    from ...data.synthetic_world import WorldConfig, pair_rows
    from ...training.synthesis_overhead import measure_synthesis_overhead

    rows = list(itertools.islice(pair_rows(WorldConfig.tiny(seed)), batch_size))
    batch = CoLLMPairCollator(processor, check_tokenization=False, seed=seed)(rows)
    share = measure_synthesis_overhead(model, batch, steps=steps, warmup=1)
    model.eval()
    return {"synthesis_overhead": share, "synthesis_batch": batch_size}


def quickstart_attention_benchmark(groups: int = 24, repeats: int = 3, seed: int = 0) -> dict:
    """`quickstart_eager_speedup`: a stage-1 and a stage-2 training step (forward + backward) of the quickstart's
    model on synthetic-world batches, with sdpa and with eager attention (same weights, interleaved)."""
    from ...data.synthetic_world import WorldConfig, image_rows, pair_rows, triplet_rows
    from ..quickstart.training import (QuickstartRecipe, TripletGroups, build_model_and_processor, pair_collator,
                                      triplet_collator)

    world = WorldConfig.tiny(seed)
    recipe = QuickstartRecipe(world=world)
    model, processor = build_model_and_processor(recipe, seed=seed)
    pair_batch = recipe.pair_batch_size * groups // recipe.groups_per_batch
    pairs = pair_collator(processor, seed, recipe.pair_crop_min_area)(list(itertools.islice(pair_rows(world), pair_batch)))
    images = {row["image_id"]: row["image"] for row in image_rows(world)}
    grouped = TripletGroups(list(triplet_rows(world)))
    triplets = triplet_collator(processor, images, seed)([grouped[i] for i in range(groups)])

    def step(batch, implementation):
        model.set_attn_implementation(implementation)
        model(**batch).loss.backward()
        model.zero_grad(set_to_none=True)

    seconds = {}
    for stage, batch in (("pair", pairs), ("triplet", triplets)):
        timed = interleaved_medians({impl: (lambda b=batch, i=impl: step(b, i)) for impl in ("sdpa", "eager")}, repeats)
        seconds.update({f"quickstart_{stage}_step_{impl}_s": value for impl, value in timed.items()})
    model.set_attn_implementation(recipe.attn_implementation)
    total = {impl: seconds[f"quickstart_pair_step_{impl}_s"] + seconds[f"quickstart_triplet_step_{impl}_s"]
             for impl in ("sdpa", "eager")}
    return {"quickstart_eager_speedup": total["sdpa"] / total["eager"], "quickstart_groups": groups, **seconds}
