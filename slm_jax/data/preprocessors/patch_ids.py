"""Patch ids for latent speech patching (LST, SEEDS.md section 3), as TF ops over one example.

LST pools runs of speech units into latent patches so the global transformer sees one
position per patch. A patch id per unit says which patch it belongs to; ids are
consecutive integers from 0 in time order, so `segment_sum`-style pooling works directly.

- static: every `k` units form a patch (needs no aligner, so it is what inference uses);
- aligned: every unit whose frame time falls inside a word gets that word's patch, and
  every maximal run of frames outside any word (a silence) is one patch of its own; a
  word covering no frame start takes the frame it lies in (`common.word_frames`, the rule
  word interleaving uses too; see `aligned_patch_ids`).

Patch ids describe the units BEFORE dedup: LST does not deduplicate units (a patch must
cover the frames of its word), so `add_patch_ids` must run before any `dedup_units`.
Pure TF graph ops, so pipelines stay checkpointable.
"""

from __future__ import annotations

from typing import Mapping

import tensorflow as tf

from slm_jax.data.preprocessors.common import declare_fields, frame_bounds, word_frames

STRATEGIES = ("static", "aligned")


def static_patch_ids(n, k: int) -> tf.Tensor:
    """[0]*k + [1]*k + ... for n units (the last patch may be shorter): int32 [n]."""
    if not isinstance(k, int) or k <= 0:
        raise ValueError(f"static_patch_ids: k must be a positive int, got {k!r}")
    return tf.range(tf.cast(n, tf.int32), dtype=tf.int32) // k


def aligned_patch_ids(num_frames, unit_rate_hz, word_start, word_end) -> tf.Tensor:
    """Word-aligned patch ids for `num_frames` units at `unit_rate_hz`: int32 [num_frames].

    Words take frames by the corpus rule (`common.word_frames`): frame f belongs to word j
    when its start f / rate lies in [start_j, end_j) (times within `FRAME_SNAP` frames of a
    boundary snap to it). A word that covers no frame start (shorter than a frame,
    zero-length, in the encoder's missing last frame) takes the frame it lies in: that frame
    is its own patch when no word's frames hold it (a silence frame), else the word shares
    the patch of the word holding it (a frame belongs to one patch; a word's own frames are
    never given away). Every maximal run of remaining frames (a silence) is one patch. Words
    must be sorted and not overlap (a tf.debugging.Assert prints them otherwise); the ids are
    consecutive from 0 in time order.
    """
    n = tf.cast(num_frames, tf.int32)
    rate = tf.cast(unit_rate_hz, tf.float64)
    start = tf.reshape(tf.cast(word_start, tf.float64), [-1])
    end = tf.reshape(tf.cast(word_end, tf.float64), [-1])
    checks = [
        tf.debugging.Assert(rate > 0, ["aligned_patch_ids: unit_rate_hz must be > 0, got", rate]),
        tf.debugging.Assert(
            tf.equal(tf.size(start), tf.size(end)),
            ["aligned_patch_ids: word_start and word_end differ in length:", tf.size(start), tf.size(end)],
        ),
    ]
    with tf.control_dependencies(checks):
        first, last = frame_bounds(start, end, rate, n)  # the words' own frames (may be empty)
        lo, _, repaired = word_frames(start, end, rate, n)
    order_check = tf.debugging.Assert(  # overlap judged on frames: float32 times may touch
        tf.logical_and(tf.reduce_all(start <= end), tf.reduce_all(last[:-1] <= first[1:])),
        ["aligned_patch_ids: words must be sorted and not overlap; word_start:", start, "word_end:", end],
        summarize=32,
    )
    with tf.control_dependencies([order_check]):
        frames = tf.range(n, dtype=tf.int32)
    word = tf.searchsorted(first, frames, side="right") - 1  # last word starting at or before the frame
    # Gather from [0] + last at word + 1, so "before every word" (-1) reads 0 and is never inside.
    inside = frames < tf.gather(tf.concat([tf.zeros([1], tf.int32), last], 0), word + 1)
    num_words = tf.size(start)
    # a silence frame given to repaired words: its own key (num_words + frame), shared by them
    given = tf.scatter_nd(tf.reshape(tf.boolean_mask(lo, repaired), [-1, 1]),
                          tf.ones_like(tf.boolean_mask(lo, repaired)), tf.reshape(n, [1])) > 0
    key = tf.where(inside, word, tf.where(given, num_words + frames, -1))  # -1: silence
    new_patch = tf.concat([tf.ones([1], tf.bool), tf.not_equal(key[1:], key[:-1])], 0)[: tf.size(key)]
    return tf.cast(tf.cumsum(tf.cast(new_patch, tf.int32)) - 1, tf.int32)


def add_patch_ids(
    ds: tf.data.Dataset,
    strategy: str = "static",
    k: int = 4,
    units_key: str = "units",
    rate_key: str = "unit_rate_hz",
    word_start_key: str = "word_start",
    word_end_key: str = "word_end",
    output_key: str = "patch_ids",
) -> tf.data.Dataset:
    """Adds `patch_ids` (int32, one per unit of `units_key`) to speech-only examples.

    Run it BEFORE dedup (LST uses no dedup). 'aligned' reads the unit rate and the word
    times of the corpus schema (`slm_jax.data.corpus.TFRECORD_FEATURES`).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"add_patch_ids: strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy == "static" and (not isinstance(k, int) or k <= 0):
        raise ValueError(f"add_patch_ids: k must be a positive int, got {k!r}")

    def fn(ex: Mapping[str, tf.Tensor]) -> dict:
        needed = [units_key] + ([rate_key, word_start_key, word_end_key] if strategy == "aligned" else [])
        missing = [key for key in needed if key not in ex]
        if missing:
            raise ValueError(
                f"add_patch_ids({strategy!r}): example has no feature(s) {missing}; features: {sorted(ex)}"
            )
        ex = dict(ex)
        n = tf.size(ex[units_key])
        if strategy == "static":
            ex[output_key] = static_patch_ids(n, k)
        else:
            ex[output_key] = aligned_patch_ids(n, ex[rate_key], ex[word_start_key], ex[word_end_key])
        return ex

    return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


declare_fields(add_patch_ids, lambda a: [a["units_key"]] + (
    [a["rate_key"], a["word_start_key"], a["word_end_key"]] if a["strategy"] == "aligned" else []))
