"""Cross-lingual pairs: utterances joined by `parallel_id` into paired EN/FR records.

Joining two records cannot be done with TF ops inside a checkpointable pipeline, so pairs
are precomputed into records of their own (`PAIRED_TFRECORD_FEATURES`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from slm_jax.data.corpus.io import (iter_tfrecord_bytes, paired_from_example, paired_to_example, serialize,
                                    write_serialized_shards)
from slm_jax.data.corpus.schema import BadRecordError, OnBadRecord, Utterance, check_on_bad_record, log_skipped

logger = logging.getLogger(__name__)

# --- cross-lingual pairs ------------------------------------------------------------------
def _group_by_parallel_id(utts: Iterable[Utterance], langs: tuple[str, str]) -> tuple[dict, int]:
    """parallel_id -> {lang: [utts]} in first-appearance order; counts records not taking part."""
    groups: dict[str, dict[str, list[Utterance]]] = {}
    ignored = 0
    for utt in utts:
        if utt.parallel_id is None or utt.lang not in langs:
            ignored += 1
            continue
        groups.setdefault(utt.parallel_id, {lang: [] for lang in langs})[utt.lang].append(utt)
    return groups, ignored


def _pair_one(pid: str, group: dict, lang_a: str, lang_b: str, source: str) -> dict:
    """One paired record from a parallel_id group, or BadRecordError naming the ids."""
    where = f"{source}: parallel_id {pid!r}"
    for lang, other in ((lang_a, lang_b), (lang_b, lang_a)):
        if not group[lang]:
            ids = [u.id for u in group[other]]
            raise BadRecordError(f"{where}: record(s) {ids} ({other}) have no {lang!r} partner")
        if len(group[lang]) > 1:
            ids = [u.id for u in group[lang]]
            raise BadRecordError(f"{where}: {len(ids)} {lang!r} records {ids}; expected exactly one")
    a, b = group[lang_a][0], group[lang_b][0]
    if not np.isclose(a.unit_rate_hz, b.unit_rate_hz, rtol=1e-6, atol=0.0):
        raise BadRecordError(
            f"{where}: {a.id!r} has unit_rate_hz {a.unit_rate_hz} but {b.id!r} has "
            f"{b.unit_rate_hz}; expected the same unit rate on both sides"
        )
    if len(a.sentences) != len(b.sentences):
        raise BadRecordError(
            f"{where}: {a.id!r} has {len(a.sentences)} sentence(s) but {b.id!r} has "
            f"{len(b.sentences)}; expected the same number (sentence i translates sentence i)"
        )
    if not a.sentences:
        raise BadRecordError(
            f"{where}: {a.id!r} and {b.id!r} have no sentence alignments; expected at least one"
        )
    return {
        "id": pid,
        "a_lang": a.lang,
        "a_units": list(a.units),
        "a_sentence_start": [s[0] for s in a.sentences],
        "a_sentence_end": [s[1] for s in a.sentences],
        "b_lang": b.lang,
        "b_units": list(b.units),
        "b_sentence_start": [s[0] for s in b.sentences],
        "b_sentence_end": [s[1] for s in b.sentences],
        "unit_rate_hz": a.unit_rate_hz,
    }


def pair_parallel(
    utterances: Iterable[Utterance],
    lang_a: str = "en",
    lang_b: str = "fr",
    *,
    on_bad_record: OnBadRecord = "error",
    source: str = "<input>",
) -> list[dict]:
    """Joins translations by `parallel_id` into records of `PAIRED_TFRECORD_FEATURES` keys.

    Each parallel_id needs exactly one `lang_a` and one `lang_b` record with the same
    unit rate and the same number of sentences (sentence i of one side translates
    sentence i of the other; the interleaving preprocessor alternates them). Records
    without a parallel_id or in another language do not take part (their count is
    logged at INFO). Output follows the first appearance of each parallel_id.
    A bad group raises BadRecordError naming the ids, or with `on_bad_record='skip'`
    is dropped and counted in a warning.
    """
    check_on_bad_record(on_bad_record)
    if lang_a == lang_b:
        raise ValueError(f"pair_parallel: lang_a and lang_b must differ, both are {lang_a!r}")
    groups, ignored = _group_by_parallel_id(utterances, (lang_a, lang_b))
    if ignored:
        logger.info(
            "pair_parallel(%s): %d record(s) without a parallel_id in %s/%s were not paired",
            source,
            ignored,
            lang_a,
            lang_b,
        )
    pairs, reasons = [], []
    for pid, group in groups.items():
        try:
            pairs.append(_pair_one(pid, group, lang_a, lang_b, source))
        except BadRecordError as e:
            if on_bad_record == "error":
                raise
            reasons.append(str(e))
    log_skipped(reasons, len(groups), f"pair_parallel({source})")
    return pairs


def write_paired_tfrecord_shards(
    out_dir: str, prefix: str, records: Iterable[dict], num_shards: int
) -> list[str]:
    """Writes `pair_parallel` records as TFRecord shards (like `write_tfrecord_shards`)."""
    return write_serialized_shards(
        out_dir, prefix, [serialize(paired_to_example(r)) for r in records], num_shards
    )


def read_paired_tfrecord(pattern: str | Sequence[str]) -> Iterator[dict]:
    """Yields the paired records of TFRecord files (inverse of `write_paired_tfrecord_shards`)."""
    for where, raw in iter_tfrecord_bytes(pattern):
        yield paired_from_example(raw, source=where)
