"""SpiritLM word-level speech-text interleaving, vectorised over batches of records (pure TF ops).

`word_interleave` turns corpus records with word alignments into sequences like
`[Text] the cat [Speech] [Hu3] [Hu7] ... [Text] the mat EOS` (output features as in
`slm_jax.data.preprocessors.interleave`). Which words are speech follows slamkit's span policies
(`random`, `span`, `poisson`); how spans become tokens is `interleave_rows`.

Why batched: a per-record implementation costs ~100 small TF ops per record (~0.8 ms of
op overhead at ~225 tokens per record), a quarter of a plain SeqIO dedup+pack pipeline's
rate. Here records are `ragged_batch`ed (`batch_records` at a time), every step runs
once over the flat words/segments/frames of the whole batch, and the batch is unbatched
again: the same op count serves `batch_records` records. Layout used throughout: a
batch of B records with N words in all is described by `row_splits` [B+1] (record b
owns flat words [row_splits[b], row_splits[b+1])) plus flat per-word tensors.

Randomness: one seed per batch from `seqio.map_over_dataset(num_seeds=1)`; record b of
the batch uses element b (or its own slice) of each stateless draw, so a pipeline is
deterministic given its seed and input order, and a restored tf.data iterator continues
exactly (batch/unbatch state is checkpointed with it). A single record
(`word_speech_mask`, `interleave_words`) is a batch of one.
"""

from __future__ import annotations

import types

import seqio
import tensorflow as tf

from slm_jax.data.preprocessors.interleave import (
    _check_choice,
    _check_fraction,
    _dense,
    _require,
    _seed,
    _vocab,
)
from slm_jax.data.preprocessors.common import (
    DEFAULT_BATCH_RECORDS, as_ragged, declare_fields, dedup_rows, vectorized, word_frames,
)

POLICIES = ("random", "span", "poisson")

# slamkit's shipped interleaving config (config/tokeniser/interleaved_hubert_25.yaml:
# interleave_method=poisson, interleave_span=10, interleave_prob=0.3), as keyword
# arguments of `word_interleave`: `word_interleave(ds, vocab, **SLAMKIT_DEFAULTS)`.
SLAMKIT_DEFAULTS = types.MappingProxyType({"policy": "poisson", "speech_ratio": 0.3, "mean_span_words": 10.0})
# slamkit's 'random' method ignores interleave_prob and makes each word speech with this
# probability; pass it as `speech_ratio` to reproduce that policy exactly.
SLAMKIT_RANDOM_SPEECH_PROB = 0.5
# Largest Poisson mean `poisson_policy_rows` accepts (its start weights stay above float64's range).
MAX_POISSON_MEAN = 500.0

WORD_KEYS = ("units", "word_text", "word_start", "word_end")
TOKEN_KEYS = ("word_token_ids", "word_token_lengths", "word_token_model")


# --- flat-batch layout helpers ---------------------------------------------------------------
def _row_layout(row_splits: tf.Tensor):
    """(row id of each flat element, its index within its row, number of rows) for int64 splits."""
    row_splits = tf.cast(row_splits, tf.int64)
    lengths = row_splits[1:] - row_splits[:-1]
    num_rows = tf.size(lengths)
    rows = tf.cast(tf.repeat(tf.range(num_rows, dtype=tf.int64), lengths), tf.int32)
    pos = tf.cast(tf.range(row_splits[-1]) - tf.gather(row_splits, rows), tf.int32)
    return rows, pos, num_rows


def _per_row_any(flags: tf.Tensor, rows: tf.Tensor, num_rows) -> tf.Tensor:
    return tf.math.unsorted_segment_max(tf.cast(flags, tf.int32), rows, num_rows) > 0


def _per_row_sum(values: tf.Tensor, rows: tf.Tensor, num_rows) -> tf.Tensor:
    return tf.math.unsorted_segment_sum(tf.cast(values, tf.int32), rows, num_rows)


# --- word-level modality policies (slamkit semantics), one row per record ----------------------
def random_policy_rows(row_splits, seed, speech_ratio: float) -> tf.Tensor:
    """Each word independently speech with probability `speech_ratio` (slamkit 'random' uses 0.5).
    bool [N] over the flat words of all rows."""
    n = tf.cast(row_splits[-1], tf.int32)
    return tf.random.stateless_uniform([n], _seed(seed), dtype=tf.float64) < speech_ratio


def span_policy_rows(row_splits, seed, trigger_prob: float, span_words: int) -> tf.Tensor:
    """slamkit 'span': every word triggers speech with prob `trigger_prob`; a trigger makes it
    and the next `span_words - 1` words of its record speech (a later trigger restarts the count).

    So word i is speech iff some word in [i - span_words + 1, i] of its record triggered;
    the speech fraction is 1 - (1 - p)^span_words (about 0.97 for p=0.3, span 10), NOT p.
    """
    n = tf.cast(row_splits[-1], tf.int32)
    _, pos, _ = _row_layout(row_splits)
    u = tf.random.stateless_uniform([n], _seed(seed), dtype=tf.float64)
    count = tf.concat([[0], tf.cumsum(tf.cast(u < trigger_prob, tf.int32))], 0)  # count[i] = triggers before i
    index = tf.range(n)
    window_start = tf.maximum(index - span_words + 1, index - pos)  # clipped to the record's first word
    return tf.gather(count, index + 1) - tf.gather(count, window_start) > 0


def poisson_policy_rows(row_splits, seed, speech_ratio: float, mean_span_words: float) -> tf.Tensor:
    """slamkit 'poisson' (`select_spans_poisson`, slp-rl/slamkit slamkit/tokeniser/
    interleaving_tokeniser.py) in every row, drawn from its EXACT law: bool [N].

    slamkit's loop: until at least ceil(num_words * speech_ratio) words of the row are
    speech (or no start is eligible), draw a start s uniformly among the eligible words and
    a length l ~ Poisson(mean_span_words); the span [s, min(s + l, n)) is rejected when it
    overlaps selected words (the state is unchanged), else its words are selected and its
    words and the word right after it become ineligible (a length-0 draw just retires s).

    A rejected draw changes nothing, so the accepted spans are a Markov chain whose step is
    the draw conditioned on acceptance, computed here in closed form: with g_s the first
    selected word at or after s (n when none) and d_s = g_s - s, a draw is accepted iff
    l <= d_s (always when g_s = n). Hence P(s | accepted) is proportional to
    P(Poisson <= d_s) (1 when g_s = n), and l given s is Poisson truncated to [0, d_s]
    (when g_s = n, min(l, n - s) with l untruncated). Each step draws s and l by inverse CDF
    from two uniforms (float64 [B] each, from fold_in(seed, step)); every step retires at least
    one eligible word, so a row takes at most num_words + 1 steps and no step cap is needed
    (an earlier version capped the rejections, which changed the law on short records).
    """
    row_splits = tf.cast(row_splits, tf.int64)
    lengths = tf.cast(row_splits[1:] - row_splits[:-1], tf.int32)
    num_rows = tf.size(lengths)
    width = tf.reduce_max(tf.concat([lengths, [0]], 0))
    pos = tf.range(width)[tf.newaxis, :]  # [1, W]
    in_row = pos < lengths[:, tf.newaxis]
    n_col = lengths[:, tf.newaxis]
    total = tf.cast(tf.math.ceil(tf.cast(lengths, tf.float64) * speech_ratio), tf.int32)
    lam = tf.constant(float(mean_span_words), tf.float64)
    # cdf[k] = P(Poisson(lam) <= k) = Q(k + 1, lam), k = 0..W
    cdf = tf.math.igammac(tf.cast(tf.range(1, width + 2), tf.float64), lam)
    ks = tf.range(width + 1)[tf.newaxis, :]  # [1, W + 1]
    seed = _seed(seed)

    def active_rows(eligible, count):
        return (count < total) & tf.reduce_any(eligible, axis=1)

    def cond(step, mask, eligible, count):
        return tf.reduce_any(active_rows(eligible, count))

    def body(step, mask, eligible, count):
        active = active_rows(eligible, count)
        s_start, s_len = tf.unstack(
            tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in(seed, step), 2)
        )
        u_start = tf.random.stateless_uniform([num_rows], s_start, dtype=tf.float64)
        u_len = tf.random.stateless_uniform([num_rows], s_len, dtype=tf.float64)
        # g: first selected word at or after each position (n when none), by the sorted selected positions
        selected_sorted = tf.sort(tf.where(mask, pos, n_col), axis=1)
        before = tf.cumsum(tf.cast(mask, tf.int32), axis=1, exclusive=True)  # selected words before each position
        g = tf.gather(tf.concat([selected_sorted, n_col], 1), before, batch_dims=1)
        bounded = g < n_col
        d = g - pos
        weight = tf.where(eligible, tf.where(bounded, tf.gather(cdf, tf.clip_by_value(d, 0, width)),
                                             tf.ones([], tf.float64)), tf.zeros([], tf.float64))
        cum = tf.cumsum(weight, axis=1)
        start = tf.reduce_sum(tf.cast(cum <= (u_start * cum[:, -1])[:, tf.newaxis], tf.int32), axis=1)
        last_eligible = width - 1 - tf.argmax(tf.reverse(tf.cast(eligible, tf.int32), [1]), axis=1,
                                              output_type=tf.int32)
        start = tf.minimum(start, last_eligible)  # float rounding at u_start * total ~ total
        d_s = tf.gather(d, start, batch_dims=1)
        bounded_s = tf.gather(bounded, start, batch_dims=1)
        # l = the smallest k with cdf[k] >= target: truncated to [0, d_s], or min(Poisson, d_s)
        target = tf.where(bounded_s, u_len * tf.gather(cdf, tf.clip_by_value(d_s, 0, width)), u_len)
        top = tf.where(bounded_s, d_s, d_s - 1)[:, tf.newaxis]
        length = tf.reduce_sum(tf.cast((ks <= top) & (cdf[tf.newaxis, :] < target[:, tf.newaxis]), tf.int32), axis=1)
        end = start + length
        span = (pos >= start[:, tf.newaxis]) & (pos < end[:, tf.newaxis]) & active[:, tf.newaxis]
        retire = (span | tf.equal(pos, end[:, tf.newaxis])) & active[:, tf.newaxis]
        return (step + 1, mask | span, eligible & tf.logical_not(retire), count + tf.where(active, length, 0))

    init = (tf.constant(0), tf.zeros_like(in_row), in_row, tf.zeros_like(lengths))
    invariants = (tf.TensorShape([]), tf.TensorShape([None, None]), tf.TensorShape([None, None]),
                  tf.TensorShape([None]))
    mask = tf.while_loop(cond, body, init, shape_invariants=invariants)[1]
    return tf.boolean_mask(mask, in_row)


def _check_policy_args(policy: str, speech_ratio: float, mean_span_words: float, who: str):
    _check_choice("policy", policy, POLICIES, who)
    _check_fraction("speech_ratio", speech_ratio, who)
    if policy == "span":
        if float(mean_span_words) != int(mean_span_words) or int(mean_span_words) < 1:
            raise ValueError(
                f"{who}: policy='span' takes a whole mean_span_words >= 1, got {mean_span_words!r}"
            )
    elif policy == "poisson" and not 0 < float(mean_span_words) <= MAX_POISSON_MEAN:
        # the exact sampler weighs starts by P(Poisson <= d), which underflows float64 past this
        raise ValueError(f"{who}: policy='poisson' needs 0 < mean_span_words <= {MAX_POISSON_MEAN}, "
                         f"got {mean_span_words!r}")


def word_speech_mask_rows(
    row_splits, seed, policy: str = "poisson", speech_ratio: float = 0.3, mean_span_words: float = 10.0
) -> tf.Tensor:
    """bool [N]: True where the flat word is rendered as speech, False for text."""
    _check_policy_args(policy, speech_ratio, mean_span_words, "word_speech_mask")
    row_splits = tf.cast(row_splits, tf.int64)
    if policy == "random":
        return random_policy_rows(row_splits, seed, speech_ratio)
    if policy == "span":
        return span_policy_rows(row_splits, seed, speech_ratio, int(mean_span_words))
    return poisson_policy_rows(row_splits, seed, speech_ratio, float(mean_span_words))


def _one_row(num_words) -> tf.Tensor:
    return tf.stack([tf.constant(0, tf.int64), tf.cast(num_words, tf.int64)])


def word_speech_mask(
    num_words, seed, policy: str = "poisson", speech_ratio: float = 0.3, mean_span_words: float = 10.0
) -> tf.Tensor:
    """bool [num_words] for one record (a batch of one)."""
    return word_speech_mask_rows(_one_row(num_words), seed, policy, speech_ratio, mean_span_words)


# --- span assembly --------------------------------------------------------------------------------
def interleave_rows(
    words: tf.RaggedTensor,
    word_start: tf.RaggedTensor,
    word_end: tf.RaggedTensor,
    is_speech: tf.Tensor,
    units: tf.RaggedTensor,
    unit_rate_hz: tf.Tensor,
    vocabulary,
    dedup: bool = True,
    word_tokens: tf.RaggedTensor | None = None,
    use_word_tokens: tf.Tensor | None = None,
    eos: bool = False,
) -> tf.RaggedTensor:
    """The interleaved bodies [B, (tokens)] of a batch (+ EOS each when `eos`), given per-word
    modalities.

    `words`, `word_start`, `word_end`: [B, (words)]; `is_speech`: bool over their flat
    values; `units`: [B, (frames)]; `unit_rate_hz`: [B].

    Consecutive words of one modality in one record form a span. A speech span emits the
    units of the frames from its first word's first frame to its last word's last frame
    (deduplicated within the span when `dedup`), so pauses between its words are kept and
    pauses next to text spans are not (slamkit does the same). A word's frames follow
    `common.word_frames`: the frames starting inside it, or, for a word that covers no
    frame start (20 ms, zero-length, in the encoder's missing last frame), the frame it lies
    in: a speech span is NEVER empty. Words of a record without units stay text. A text span emits the SentencePiece
    ids of its words joined by single spaces. Each span is preceded by its marker, which
    is exactly "at the start and where the modality changes" because spans alternate.

    Difference from slamkit: slamkit deduplicates the whole utterance first and keeps the
    deduplicated units whose END time lies in [start, end]; here frames are chosen by
    START time (`slm_jax.data.preprocessors.interleave` docstring) and deduplicated within the span, so
    a span's units never depend on frames outside it.

    `word_tokens` ([N, (ids)], one row per flat word): the corpus's pre-tokenized
    SentencePiece ids of each word, used for the records where `use_word_tokens` [B] holds. SentencePiece
    segments whitespace-separated words independently, so a span's ids are its words'
    ids concatenated: the same output, without running the tokenizer at train time.
    """
    row_splits = words.row_splits
    word_row, _, num_rows = _row_layout(row_splits)
    frames_per_row = tf.cast(units.row_lengths(), tf.int32)
    # every word's frames by the one rule (`common.word_frames`: never empty when the record
    # has units); a record without units has no frames to give, so its words stay text
    word_lo, word_hi, _ = word_frames(
        word_start.flat_values, word_end.flat_values, tf.gather(tf.cast(unit_rate_hz, tf.float64), word_row),
        tf.gather(frames_per_row, word_row))
    is_speech = tf.logical_and(tf.cast(is_speech, tf.bool), word_hi > word_lo)

    # segments: maximal runs of one modality within a record
    changes = dedup_rows(is_speech, word_row)
    seg = tf.cumsum(tf.cast(changes, tf.int32)) - 1
    first = tf.cast(tf.where(changes)[:, 0], tf.int32)
    num_seg = tf.size(first)
    seg_row = tf.gather(word_row, first)
    seg_speech = tf.gather(is_speech, first)
    seg64 = tf.cast(seg, tf.int64)

    # text spans: the tokenizer over the joined words (only when some span needs it), or
    # the corpus's per-word ids; both come out in span order, with per-span counts
    pretokenized = (
        tf.zeros([num_rows], tf.bool) if word_tokens is None else tf.cast(use_word_tokens, tf.bool)
    )
    tokenize = tf.logical_not(tf.logical_or(seg_speech, tf.gather(pretokenized, seg_row)))

    def tokenized():
        joined = tf.strings.reduce_join(
            tf.RaggedTensor.from_value_rowids(words.flat_values, seg64, nrows=tf.cast(num_seg, tf.int64),
                                              validate=False),
            axis=1,
            separator=" ",
        )
        ids = vocabulary.encode_text_tf(tf.where(tokenize, joined, ""))
        return tf.cast(ids.flat_values, tf.int32), tf.cast(ids.row_lengths(), tf.int32)

    def none_tokenized():
        return tf.zeros([0], tf.int32), tf.zeros([num_seg], tf.int32)

    text_parts = [tf.cond(tf.reduce_any(tokenize), tokenized, none_tokenized)]
    if word_tokens is not None:
        take = tf.logical_and(tf.logical_not(is_speech), tf.gather(pretokenized, word_row))
        counts = tf.where(take, tf.cast(word_tokens.row_lengths(), tf.int32), 0)
        ids = tf.boolean_mask(tf.cast(word_tokens.flat_values, tf.int32), tf.repeat(take, word_tokens.row_lengths()))
        text_parts.append((ids, tf.math.unsorted_segment_sum(counts, seg, num_seg)))

    # speech spans: from their first word's first frame to their last word's last frame, so
    # pauses between a span's words are kept (with repaired words, min / max over the span)
    lo = tf.math.unsorted_segment_min(word_lo, seg, num_seg)
    hi = tf.math.unsorted_segment_max(word_hi, seg, num_seg)
    offset = tf.gather(tf.cast(units.row_splits, tf.int32), seg_row)
    frames = tf.ragged.range(lo + offset, tf.where(seg_speech, hi, lo) + offset)
    unit_values = tf.gather(units.flat_values, frames.flat_values)
    frame_seg = tf.cast(frames.value_rowids(), tf.int32)
    if dedup:
        keep = dedup_rows(unit_values, frame_seg)
        unit_values, frame_seg = tf.boolean_mask(unit_values, keep), tf.boolean_mask(frame_seg, keep)
    unit_parts = (tf.cast(vocabulary.units_to_ids_tf(unit_values), tf.int32),
                  tf.math.unsorted_segment_sum(tf.ones_like(frame_seg), frame_seg, num_seg))

    # Output layout by index arithmetic (no ragged concatenation): record b's tokens are
    # its spans in order, each [marker, units..., text...], then EOS when `eos`.
    parts = [unit_parts, *text_parts]
    span_sizes = 1 + tf.add_n([size for _, size in parts])
    row_sizes = tf.math.unsorted_segment_sum(span_sizes, seg_row, num_rows) + int(eos)
    out_splits = tf.concat([[0], tf.cumsum(row_sizes)], 0)
    span_start = tf.cumsum(span_sizes, exclusive=True) + int(eos) * seg_row  # + EOS of earlier records
    positions, values = [span_start], [tf.where(seg_speech, vocabulary.speech_marker_id, vocabulary.text_marker_id)]
    before = tf.ones_like(span_sizes)  # tokens of the span already placed: the marker
    for part_values, part_sizes in parts:
        value_span = tf.repeat(tf.range(num_seg), part_sizes)
        rank = tf.range(tf.size(value_span)) - tf.gather(tf.cumsum(part_sizes, exclusive=True), value_span)
        positions.append(tf.gather(span_start + before, value_span) + rank)
        values.append(part_values)
        before += part_sizes
    if eos:
        positions.append(out_splits[1:] - 1)
        values.append(tf.fill([num_rows], vocabulary.eos_id))
    flat = tf.scatter_nd(
        tf.expand_dims(tf.concat(positions, 0), 1), tf.cast(tf.concat(values, 0), tf.int32), out_splits[-1:]
    )
    return tf.RaggedTensor.from_row_splits(tf.reshape(flat, [-1]), tf.cast(out_splits, tf.int64), validate=False)


def interleave_words(
    words, word_start, word_end, is_speech, units, unit_rate_hz, vocabulary, dedup: bool = True,
    word_tokens: tf.RaggedTensor | None = None, use_word_tokens=None,
) -> tf.Tensor:
    """`interleave_rows` for ONE record (1-D inputs; `word_tokens` [words, (ids)]): its body."""

    def row(x):
        return tf.RaggedTensor.from_tensor(tf.expand_dims(_dense(x), 0))

    if word_tokens is not None:
        use_word_tokens = tf.reshape(tf.cast(use_word_tokens, tf.bool), [1])
    body = interleave_rows(
        row(words), row(word_start), row(word_end), is_speech, row(units),
        tf.reshape(tf.cast(unit_rate_hz, tf.float64), [1]), vocabulary, dedup, word_tokens, use_word_tokens,
    )
    return body.flat_values


# --- checks over a batch (errors name the offending records) -----------------------------------
def _assert_rows(ok: tf.Tensor, ids: tf.Tensor, message: str, *details):
    return tf.debugging.Assert(
        tf.reduce_all(ok), ["word_interleave: record(s)", tf.boolean_mask(ids, tf.logical_not(ok)), message,
                            *details]
    )


def _alignment_check(batch):
    n = batch["word_text"].row_lengths()
    start, end = batch["word_start"], batch["word_end"]
    ok = tf.logical_and(tf.equal(start.row_lengths(), n), tf.equal(end.row_lengths(), n))
    # among the records whose lengths agree, find a word that ends before it starts
    reversed_word = tf.reduce_any(tf.ragged.boolean_mask(start, ok) > tf.ragged.boolean_mask(end, ok), axis=1)
    ok = tf.tensor_scatter_nd_update(ok, tf.where(ok), tf.logical_not(reversed_word))
    return _assert_rows(
        ok, batch["id"],
        "have inconsistent word alignments (word_text/word_start/word_end lengths differ, "
        "or a word ends before it starts)",
    )


def _rates(batch, unit_rate_hz, num_rows):
    if unit_rate_hz is not None:
        return tf.fill([num_rows], tf.constant(float(unit_rate_hz), tf.float64)), []
    if "unit_rate_hz" not in batch:
        raise ValueError("word_interleave: records have no 'unit_rate_hz' feature; pass unit_rate_hz=...")
    rate = tf.cast(batch["unit_rate_hz"], tf.float64)
    return rate, [_assert_rows(rate > 0, batch["id"], "have unit_rate_hz <= 0:", rate)]


def _pretokenized(batch, vocabulary):
    """([N, (ids)] per-word ids, bool [B] whether each record uses them, checks), or Nones.

    A record carries pre-tokenized words when its `word_token_model` is set; then it must
    have one entry per word and the digest of THIS vocabulary's model, or the pipeline
    stops naming the record (never silently different ids). Records without them (empty
    fields) go through the tokenizer (their words get no ids here).
    """
    if not all(k in batch for k in TOKEN_KEYS):
        return None, None, []
    digest = getattr(vocabulary, "model_digest", None) or ""
    lengths, model = batch["word_token_lengths"], batch["word_token_model"]
    has_tokens = tf.not_equal(model, "")
    consistent = tf.logical_and(
        tf.equal(lengths.row_lengths(), batch["word_text"].row_lengths()),
        tf.equal(model, tf.constant(digest, tf.string)),
    )
    check = _assert_rows(
        tf.logical_or(tf.logical_not(has_tokens), consistent), batch["id"],
        "have word_token_ids for a different number of words, or from SentencePiece model",
        tf.boolean_mask(model, tf.logical_not(consistent)),
        f"but the vocabulary's model is {digest or None}; rebuild the corpus tokens or drop the "
        "word_token_* fields from the task",
    )
    use = tf.logical_and(has_tokens, consistent)
    with tf.control_dependencies([check]):
        word_row, _, _ = _row_layout(batch["word_text"].row_splits)
        used_lengths = tf.cast(tf.ragged.boolean_mask(lengths, use).flat_values, tf.int64)
        per_word_lengths = tf.scatter_nd(
            tf.where(tf.gather(use, word_row)), used_lengths, tf.shape(word_row, out_type=tf.int64)
        )
        ids = tf.ragged.boolean_mask(batch["word_token_ids"], use).flat_values
        return tf.RaggedTensor.from_row_lengths(ids, per_word_lengths), use, [check]


@seqio.map_over_dataset(num_seeds=1)
def _interleave_batch(batch, seed, vocabulary, policy, speech_ratio, mean_span_words, dedup, unit_rate_hz):
    batch = {k: as_ragged(v) for k, v in batch.items()}
    num_rows = tf.size(batch["word_text"].row_lengths())
    if "id" not in batch:
        batch = {**batch, "id": tf.fill([num_rows], "")}
    rate, checks = _rates(batch, unit_rate_hz, num_rows)
    checks.append(_alignment_check(batch))
    word_tokens, use_word_tokens, token_checks = _pretokenized(batch, vocabulary)
    # everything below reads the batch through the checks: a bad record fails with their
    # message naming it, never first with a shape error from a concurrently run op
    with tf.control_dependencies(checks + token_checks):
        batch = {k: tf.identity(v) for k, v in batch.items()}
    row_splits = batch["word_text"].row_splits
    speech = word_speech_mask_rows(row_splits, seed, policy, speech_ratio, mean_span_words)
    targets = interleave_rows(
        batch["word_text"], batch["word_start"], batch["word_end"], speech, batch["units"], rate,
        vocabulary, dedup, word_tokens, use_word_tokens, eos=True,
    )
    return {
        "id": batch["id"],
        "targets": targets,
        "modality": targets.with_flat_values(tf.cast(vocabulary.modality_ids_tf(targets.flat_values), tf.int32)),
        "loss_mask": tf.ones_like(targets),
    }


def word_interleave(
    dataset: tf.data.Dataset,
    vocabulary=None,
    policy: str = "poisson",
    speech_ratio: float = 0.3,
    mean_span_words: float = 10.0,
    dedup: bool = True,
    unit_rate_hz: float | None = None,
    batch_records: int = DEFAULT_BATCH_RECORDS,
    output_features=None,
) -> tf.data.Dataset:
    """SpiritLM word-level speech-text interleaving from word alignments, e.g.
    `[Text] the cat [Speech] [Hu3] [Hu7] ... [Text] the mat EOS`.

    Which words are speech (slamkit's `InterleavingTokeniser._assign_interleaved_modality`,
    slp-rl/slamkit slamkit/tokeniser/interleaving_tokeniser.py):
      - 'random': each word is speech with probability `speech_ratio` independently
        (slamkit hard-codes 0.5: `SLAMKIT_RANDOM_SPEECH_PROB`).
      - 'span': `speech_ratio` is the per-word probability that a speech span of exactly
        `mean_span_words` words starts there (slamkit interleave_prob / interleave_span);
        overlapping spans merge. See `span_policy_rows`.
      - 'poisson': Poisson(`mean_span_words`)-long speech spans placed without overlap until
        at least ceil(num_words * speech_ratio) words are speech (slamkit
        `select_spans_poisson`). See `poisson_policy_rows`.
    `SLAMKIT_DEFAULTS` holds slamkit's shipped setting (poisson, 0.3, 10).

    How spans become tokens: `interleave_rows`. Units come from the record's `units` at
    `unit_rate_hz` (default: the record's `unit_rate_hz` feature). A record with no words
    gives `[EOS]`. Records are processed `batch_records` at a time (module docstring); the
    output is one example per record, in input order. `word_interleave_batches` is the
    same step for a dataset that is already batched (`register_corpus_task(batched=True)`).
    """
    return vectorized(
        dataset,
        lambda batches: word_interleave_batches(batches, vocabulary, policy, speech_ratio, mean_span_words, dedup,
                                                unit_rate_hz, output_features),
        batch_records,
    )


def word_interleave_batches(
    batches: tf.data.Dataset,
    vocabulary=None,
    policy: str = "poisson",
    speech_ratio: float = 0.3,
    mean_span_words: float = 10.0,
    dedup: bool = True,
    unit_rate_hz: float | None = None,
    output_features=None,
) -> tf.data.Dataset:
    """`word_interleave` on a dataset of ragged record batches (features [B, ...]): each batch
    becomes the batch of its records' interleaved examples. Same arguments and output."""
    who = "word_interleave"
    _check_policy_args(policy, speech_ratio, mean_span_words, who)
    vocabulary = _vocab(vocabulary, output_features, who)
    _require(batches.element_spec, list(WORD_KEYS), who)  # at build time, before any record is read
    return _interleave_batch(
        batches,
        vocabulary=vocabulary,
        policy=policy,
        speech_ratio=float(speech_ratio),
        mean_span_words=float(mean_span_words),
        dedup=bool(dedup),
        unit_rate_hz=unit_rate_hz,
    )


def _word_fields(a):
    return [*WORD_KEYS, *(["unit_rate_hz"] if a["unit_rate_hz"] is None else [])]


declare_fields(word_interleave, _word_fields)
declare_fields(word_interleave_batches, _word_fields)
