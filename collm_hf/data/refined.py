"""Overlay a refined validation file (CoLLM §4.2: Refined-CIRR, Refined-FashionIQ) on the `queries` rows.

An LLM judge re-checked each validation triplet: ambiguous texts were rewritten (`is_refined` true) or the
triplet removed. The refined file lists the kept triplets; a query absent from it was removed and is left
out of `queries_refined`. Rows keep every `queries` column, with `modification_text` replaced by the
refined text, plus `is_refined` and `original_text`.

Accepted files (a JSON list of objects; anything else fails with an error naming the problem):
- CIRR (`refined_cirr.val.json`, the one documented file): {"pairid", "caption", "is_refined"}, extra
  keys (reference, target_hard, img_set, ...) ignored.
- Fashion-IQ (layout not documented): the same shape. Each entry names its query by `pairid` / `id` /
  `query_id` (this package's Fashion-IQ query id, e.g. "dress-val-12"), or by `candidate` + `target`
  (+ optional `category`: otherwise every category's matching triplets); the text is `caption` (the
  joined query text), `captions` (two captions, joined the de-facto way) or `modification_text`.
In both, `is_refined` defaults to "the text differs from the original"; `removed: true` drops the entry.
"""

import os

from ._build import DatasetBuildError, raise_problems, read_json
from .text import join_fashioniq_captions

ID_KEYS = ("pairid", "id", "query_id")
TEXT_KEYS = ("caption", "captions", "modification_text")
REMOVED_KEYS = ("removed", "is_removed")


def refined_rows(query_rows: list[dict], path: str | os.PathLike, benchmark: str,
                 dropped_rows: list[dict] = ()) -> tuple[list[dict], str]:
    """Return (`queries_refined` rows, a one-line summary for the card).

    Args:
        query_rows: the split's `queries` rows (dicts in the `queries` schema), in their order.
        path: the refined JSON file.
        benchmark: "cirr" (entries matched by `pairid`) or "fashioniq" (by id, or candidate/target pair).
        dropped_rows: val queries dropped by `allow_missing`: entries naming them are skipped, not errors.
    """
    entries = read_json(path, "refined file")
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise DatasetBuildError(f"refined file {path}: expected a JSON list of objects shaped like Refined-CIRR's "
                                "refined_cirr.val.json ({\"pairid\", \"caption\", \"is_refined\"})")
    by_id = {row["query_id"]: row for row in [*query_rows, *dropped_rows]}
    by_pair: dict[tuple, list[str]] = {}
    if benchmark == "fashioniq":
        for row in [*query_rows, *dropped_rows]:
            target = row["target_ids"][0] if row["target_ids"] else None
            by_pair.setdefault((row["reference_id"], target), []).append(row["query_id"])

    overlay: dict[str, dict] = {}
    problems = []
    for index, entry in enumerate(entries):
        ids, problem = _match(entry, by_id, by_pair, benchmark)
        text = _text(entry)
        if problem is None and text is None and not _removed(entry):
            problem = f"has none of the text keys {list(TEXT_KEYS)}"
        if problem is not None:
            problems.append(f"[{index}] {problem}")
            continue
        for query_id in ids:
            if query_id in overlay:
                problems.append(f"[{index}] query {query_id} is refined twice")
            overlay[query_id] = entry
    raise_problems(problems, f"refined file {path}: entries that do not fit the {benchmark} val queries")

    rows, rewritten = [], 0
    for row in query_rows:
        entry = overlay.get(row["query_id"])
        if entry is None or _removed(entry):
            continue
        original, text = row["modification_text"], _text(entry)
        is_refined = _as_bool(entry["is_refined"]) if "is_refined" in entry else text != original
        refined = {**row, "modification_text": text, "is_refined": is_refined, "original_text": original}
        if isinstance(entry.get("captions"), list) and "captions" in row:
            refined["captions"] = [str(caption) for caption in entry["captions"]]
        rows.append(refined)
        rewritten += is_refined
    summary = (f"{len(rows)} of {len(query_rows)} val queries kept ({len(query_rows) - len(rows)} removed), "
               f"{rewritten} with a rewritten text; overlaid by query id from `{os.path.basename(path)}`.")
    return rows, summary


def _match(entry: dict, by_id: dict, by_pair: dict, benchmark: str) -> tuple[list[str], str | None]:
    id_key = next((key for key in ID_KEYS if key in entry), None)
    if id_key is not None and str(entry[id_key]) in by_id:
        return [str(entry[id_key])], None
    if benchmark == "fashioniq" and "candidate" in entry and "target" in entry:
        ids = by_pair.get((str(entry["candidate"]), str(entry["target"])), [])
        if "category" in entry:
            ids = [query_id for query_id in ids if query_id.startswith(f"{entry['category']}-")]
        if not ids:
            return [], f"candidate/target {entry['candidate']}/{entry['target']} is not a val triplet"
        return ids, None
    if id_key is not None:
        return [], f"{id_key} {entry[id_key]!r} is not a val query"
    needs = "pairid" if benchmark == "cirr" else f"one of {list(ID_KEYS)} or candidate + target"
    return [], f"names no query: needs {needs}"


def _text(entry: dict) -> str | None:
    if isinstance(entry.get("caption"), str):
        return entry["caption"]
    captions = entry.get("captions")
    if isinstance(captions, list) and captions and all(isinstance(c, str) for c in captions):
        return join_fashioniq_captions(captions)
    if isinstance(entry.get("modification_text"), str):
        return entry["modification_text"]
    return None


def _removed(entry: dict) -> bool:
    return any(_as_bool(entry.get(key)) for key in REMOVED_KEYS)


def _as_bool(value) -> bool:
    """JSON true/false, 0/1, or the strings "true"/"false" (some exports write booleans as text)."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)
