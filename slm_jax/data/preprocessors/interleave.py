"""SeqIO preprocessors that turn corpus records into SLM token sequences (pure TF ops).

Every preprocessor here reads parsed corpus records (`slm_jax.data.corpus`
`TFRECORD_FEATURES` / `PAIRED_TFRECORD_FEATURES`) and emits exactly these features:

    id         the record id (tf.string scalar), kept for debugging and eval joins
    targets    int32 ids in the `SpeechTextVocabulary` token space, ending with EOS
    modality   int32, `vocabulary.modality_ids_tf(targets)` (0 pad, 1 text, 2 speech, 3 marker)
    loss_mask  int32 ones (task formats elsewhere mask prompts; the feature converter
               multiplies it into `decoder_loss_weights`)

Every other record feature is dropped, so the outputs of different preprocessors can be
mixed in one SeqIO mixture. In a SeqIO Task `vocabulary` may be left out: SeqIO passes
`output_features` and the `targets` feature's vocabulary is used.

Sequences start with the marker of their first modality (`[Speech]` / `[Text]`), as in
SpiritLM: a model trained on a mix of speech-only, text-only and interleaved data then
always knows which modality comes next, and a prompt can force the output modality by
ending with a marker. Inside a sequence a marker appears ONLY where the modality changes.

Why pure TF: the tf.data iterator is saved with `tf.train.Checkpoint` for exact resume,
which fails on `tf.py_function` / `from_generator`. Randomness therefore comes from
`seqio.map_over_dataset(num_seeds=1)` (a seed per element drawn from a checkpointable
`tf.data.Dataset.random`) fed to `tf.random.stateless_*` ops: the same seed gives the
same output, and a restored iterator continues with the same seeds. Set the initial
seed with `seqio.map_seed_manager(seed)` (seqio does this from `get_dataset(seed=...)`).

Batch-first: speech-only, text-only and cross-lingual interleaving are written once, on
ragged record batches (`*_batches`, for `register_corpus_task(batched=True)`); the
per-record names run them `batch_records` records at a time (`common.vectorized`). A
random step therefore draws one seed per batch, and record b takes element b of each draw.

Time -> frame convention (word interleaving, cross-lingual sentences, aligned LST patches):
`common.word_frames`. Frame f of a stream at rate r covers [f/r, (f+1)/r) and belongs to a
time range [start, end) when its START lies in it: f in [ceil(start*r), ceil(end*r)), so
contiguous ranges share no frame and lose none; a time within `FRAME_SNAP` (1/100) of a
frame boundary snaps to it (float32 times). A range that covers no frame start (shorter
than a frame, zero-length, or in/after the encoder's missing last frame) takes the frame
it lies in (the last one when it lies after the units), so a speech span is never empty.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import seqio
import tensorflow as tf

from slm_jax.data import corpus
from slm_jax.data.preprocessors.common import (  # noqa: F401 - FRAME_SNAP, frame_bounds: public here too
    DEFAULT_BATCH_RECORDS, FRAME_SNAP, as_ragged, declare_fields, dedup_rows, frame_bounds, unit_token_ids, vectorized,
    word_frames,
)

SIDES = ("a", "b")
STARTS = ("random", "a", "b")

OUTPUT_KEYS = ("id", "targets", "modality", "loss_mask")


# --- small shared helpers ------------------------------------------------------------------
def _dense(x) -> tf.Tensor:
    """A 1-D parsed list feature as a dense tensor (RaggedFeature already is; VarLen is sparse)."""
    if isinstance(x, tf.SparseTensor):
        return tf.sparse.to_dense(x)
    return tf.convert_to_tensor(x)


def _require(ex: Mapping[str, tf.Tensor], keys: Sequence[str], who: str) -> None:
    """Fails at trace time, naming the missing record features (not deep inside the graph)."""
    missing = [k for k in keys if k not in ex]
    if missing:
        raise ValueError(
            f"{who}: records lack feature(s) {missing}; got {sorted(ex)} (see slm_jax.data.corpus)"
        )


def _record_id(ex: Mapping[str, tf.Tensor]) -> tf.Tensor:
    return ex["id"] if "id" in ex else tf.constant("", tf.string)


def _vocab(vocabulary, output_features, who: str):
    """The vocabulary argument, else the `targets` output feature's (SeqIO passes
    `output_features` to preprocessors that accept it, so tasks need no functools.partial)."""
    if vocabulary is None and output_features is not None and "targets" in output_features:
        vocabulary = output_features["targets"].vocabulary
    if vocabulary is None or not hasattr(vocabulary, "speech_marker_id"):
        raise ValueError(
            f"{who}: vocabulary must be a SpeechTextVocabulary (argument `vocabulary` or "
            f"output_features['targets'].vocabulary), got {type(vocabulary).__name__}"
        )
    return vocabulary


def _seed(seed) -> tf.Tensor:
    """A stateless-op seed: int64 [2] (seqio passes a pair of int64 scalars)."""
    return tf.cast(tf.convert_to_tensor(seed), tf.int64)


def _one(x) -> tf.Tensor:
    return tf.reshape(tf.cast(x, tf.int32), [1])


def finish_example(
    ex: Mapping[str, tf.Tensor], body: tf.Tensor, vocabulary, passthrough: Sequence[str] = ()
) -> dict:
    """The preprocessor output: `body` + EOS as `targets`, its modality ids, ones as loss_mask,
    plus the record features named in `passthrough` unchanged (e.g. `ctc_targets`)."""
    targets = tf.concat([tf.cast(body, tf.int32), _one(vocabulary.eos_id)], 0)
    return {
        "id": _record_id(ex),
        "targets": targets,
        "modality": tf.cast(vocabulary.modality_ids_tf(targets), tf.int32),
        "loss_mask": tf.ones_like(targets),
        **{k: ex[k] for k in passthrough},
    }


def run_starts(x: tf.Tensor) -> tf.Tensor:
    """Indices of the first element of each run of equal values (dedup keeping first-frame times)."""
    return tf.cast(tf.where(dedup_rows(x))[:, 0], tf.int32)


def _check_fraction(name: str, value: float, who: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{who}: {name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _check_choice(name: str, value: str, choices: Sequence[str], who: str) -> str:
    if value not in choices:
        raise ValueError(f"{who}: {name} must be one of {list(choices)}, got {value!r}")
    return value


def _speech_marker(vocabulary, use: bool) -> tf.Tensor:
    return _one(vocabulary.speech_marker_id) if use else tf.zeros([0], tf.int32)


# --- speech only / text only ---------------------------------------------------------------
def speech_only(
    dataset: tf.data.Dataset,
    vocabulary=None,
    dedup: bool = True,
    units_key: str = "units",
    output_features=None,
    passthrough: Sequence[str] = (),
    batch_records: int = DEFAULT_BATCH_RECORDS,
) -> tf.data.Dataset:
    """`[Speech] u1 u2 ... EOS` from a record's frame-level units (run-length deduplicated by
    default, as SpiritLM and slamkit train on deduplicated HuBERT units). `passthrough`:
    record features kept unchanged in the output (e.g. `ctc_targets`). Runs
    `speech_only_batches` over `batch_records` records at a time (`vectorized`)."""
    return vectorized(
        dataset, lambda batches: speech_only_batches(batches, vocabulary, dedup, units_key, output_features,
                                                     passthrough), batch_records)


def text_only(
    dataset: tf.data.Dataset, vocabulary=None, text_key: str = "text", output_features=None,
    batch_records: int = DEFAULT_BATCH_RECORDS,
) -> tf.data.Dataset:
    """`[Text] <SentencePiece ids of the transcript> EOS` (the vocabulary needs a text model). Runs
    `text_only_batches` over `batch_records` records at a time (`vectorized`)."""
    return vectorized(dataset, lambda batches: text_only_batches(batches, vocabulary, text_key, output_features),
                      batch_records)


def _batch_examples(batch, body: tf.RaggedTensor, vocabulary, marker_id: int | None,
                    passthrough: Sequence[str] = ()) -> dict:
    """`finish_example` for a batch: [marker] + body + [EOS] per row, with ids, modality, loss mask,
    plus the batch features named in `passthrough` unchanged."""
    rows = body.nrows()
    body = tf.cast(body, tf.int32).with_row_splits_dtype(tf.int64)
    column = lambda value: tf.RaggedTensor.from_tensor(tf.fill([rows, 1], tf.constant(value, tf.int32)))  # noqa: E731
    targets = tf.concat([*([column(marker_id)] if marker_id is not None else []), body, column(vocabulary.eos_id)],
                        axis=1)
    return {
        "id": batch["id"] if "id" in batch else tf.fill([rows], ""),
        "targets": targets,
        "modality": targets.with_flat_values(tf.cast(vocabulary.modality_ids_tf(targets.flat_values), tf.int32)),
        "loss_mask": tf.ones_like(targets),
        **{k: batch[k] for k in passthrough},
    }


def speech_only_batches(batches: tf.data.Dataset, vocabulary=None, dedup: bool = True, units_key: str = "units",
                        output_features=None, passthrough: Sequence[str] = ()) -> tf.data.Dataset:
    """`speech_only` on a dataset of ragged record batches (`register_corpus_task(batched=True)`):
    each batch becomes the batch of its records' examples."""
    vocabulary = _vocab(vocabulary, output_features, "speech_only")
    _require(batches.element_spec, [units_key, *passthrough], "speech_only")

    def fn(batch):
        units = as_ragged(batch[units_key])
        values, rows = units.flat_values, units.value_rowids()
        if dedup:  # runs never cross records
            keep = dedup_rows(values, rows)
            values, rows = tf.boolean_mask(values, keep), tf.boolean_mask(rows, keep)
        ids = tf.cast(vocabulary.units_to_ids_tf(values), tf.int32)
        body = tf.RaggedTensor.from_value_rowids(ids, rows, nrows=units.nrows(), validate=False)
        return _batch_examples(batch, body, vocabulary, vocabulary.speech_marker_id, passthrough)

    return batches.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def text_only_batches(batches: tf.data.Dataset, vocabulary=None, text_key: str = "text",
                      output_features=None) -> tf.data.Dataset:
    """`text_only` on a dataset of ragged record batches: one tokenizer call per batch."""
    vocabulary = _vocab(vocabulary, output_features, "text_only")
    _require(batches.element_spec, [text_key], "text_only")

    def fn(batch):
        ids = vocabulary.encode_text_tf(tf.reshape(batch[text_key], [-1]))
        return _batch_examples(batch, ids, vocabulary, vocabulary.text_marker_id)

    return batches.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


# --- cross-lingual sentence-level interleaving -------------------------------------------------
def sentence_sides_rows(sentence_splits, seed, switch_prob: float = 1.0, start: str = "random") -> tf.Tensor:
    """int32 [N] over the flat sentences of B records (`sentence_splits` [B+1]: record b owns
    sentences [splits[b], splits[b+1])): 0 where the sentence comes from side a, 1 from side b.

    The first sentence of record b is side `start` ('random': element b of one fair-coin draw
    U[0, 1) float64 [B] < 0.5); at each later sentence the side switches with probability
    `switch_prob` (element i of one draw U[0, 1) float64 [N] < switch_prob). 1.0: strict
    alternation a b a b ... (the setting of Moumen et al.); 0.0: never switches. The two
    draws use the two halves of `stateless_split(seed, 2)`.
    """
    _check_choice("start", start, STARTS, "sentence_sides")
    splits = tf.cast(sentence_splits, tf.int64)
    num_rows = tf.size(splits, out_type=tf.int64) - 1
    sentence_row = tf.repeat(tf.range(num_rows), splits[1:] - splits[:-1])
    row_start = tf.gather(splits, sentence_row)
    first_in_row = tf.equal(tf.range(splits[-1]), row_start)
    s_first, s_switch = tf.unstack(tf.random.experimental.stateless_split(_seed(seed), 2))
    if start == "random":
        first = tf.cast(tf.random.stateless_uniform([num_rows], s_first, dtype=tf.float64) < 0.5, tf.int32)
    else:
        first = tf.fill([num_rows], SIDES.index(start))
    switch = tf.random.stateless_uniform(tf.shape(sentence_row), s_switch, dtype=tf.float64) < switch_prob
    switch = tf.cast(tf.logical_and(switch, tf.logical_not(first_in_row)), tf.int32)
    switches = tf.cumsum(switch) - tf.gather(tf.cumsum(switch, exclusive=True), row_start)
    return (tf.gather(first, sentence_row) + switches) % 2


def sentence_sides(num_sentences, seed, switch_prob: float = 1.0, start: str = "random") -> tf.Tensor:
    """int32 [S]: `sentence_sides_rows` for ONE record of `num_sentences` sentences (a batch of one)."""
    splits = tf.stack([tf.constant(0, tf.int64), tf.cast(num_sentences, tf.int64)])
    return sentence_sides_rows(splits, seed, switch_prob, start)


def _lang_tag(vocabulary, lang: tf.Tensor) -> tf.Tensor:
    return tf.cast(vocabulary.lang_tag_id_tf(lang), tf.int32)


# The paired-record fields this module reads: the corpus layout's, less the unit rate
# (an argument or a feature read separately).
PAIRED_KEYS = tuple(k for k in corpus.PAIRED_TFRECORD_FEATURES if k != "unit_rate_hz")


def crosslingual_interleave(
    dataset: tf.data.Dataset,
    vocabulary=None,
    switch_prob: float = 1.0,
    lang_tags: bool = False,
    dedup: bool = True,
    start: str = "random",
    unit_rate_hz: float | None = None,
    speech_marker: bool = True,
    output_features=None,
    batch_records: int = DEFAULT_BATCH_RECORDS,
) -> tf.data.Dataset:
    """Sentence-level cross-lingual interleaving over PAIRED records (Moumen et al.), speech only:
    `[Speech] [EN]? <units of EN sentence 0> [FR]? <units of FR sentence 1> ... EOS`.

    Sentence i of side a is the translation of sentence i of side b; the sides per sentence
    are `sentence_sides_rows(..., switch_prob, start)`, and sentence i contributes the units of
    its side's frames in [sentence_start[i], sentence_end[i]). Consecutive sentences of one
    side form a run; dedup works within a run (a run is a stretch of one recording; two
    recordings' units are never merged). `lang_tags` inserts
    `vocabulary.lang_tag_id_tf(lang)` before each run (the vocabulary must list both
    languages). `speech_marker` puts `[Speech]` first, like every speech sequence of this
    module (a unit-only model can turn it off). Units are at `unit_rate_hz` (default: the
    record's feature).

    Runs `crosslingual_interleave_batches` over `batch_records` records at a time
    (`vectorized`): one seed per batch, record b takes element b of each draw, so the draws
    depend on `batch_records` (`batch_records=1`: one seed per record).
    """
    return vectorized(
        dataset,
        lambda batches: crosslingual_interleave_batches(batches, vocabulary, switch_prob, lang_tags, dedup, start,
                                                        unit_rate_hz, speech_marker, output_features),
        batch_records)


def crosslingual_interleave_batches(
    batches: tf.data.Dataset,
    vocabulary=None,
    switch_prob: float = 1.0,
    lang_tags: bool = False,
    dedup: bool = True,
    start: str = "random",
    unit_rate_hz: float | None = None,
    speech_marker: bool = True,
    output_features=None,
) -> tf.data.Dataset:
    """`crosslingual_interleave` on a dataset of ragged batches of paired records
    (`register_corpus_task(batched=True)`): each batch becomes the batch of its records'
    examples. Same arguments and output."""
    who = "crosslingual_interleave"
    switch_prob = _check_fraction("switch_prob", switch_prob, who)
    _check_choice("start", start, STARTS, who)
    vocabulary = _vocab(vocabulary, output_features, who)
    _require(batches.element_spec, PAIRED_KEYS, who)
    return _crosslingual_batch(batches, vocabulary=vocabulary, switch_prob=switch_prob, lang_tags=bool(lang_tags),
                               dedup=bool(dedup), start=start, unit_rate_hz=unit_rate_hz,
                               speech_marker=bool(speech_marker))


@seqio.map_over_dataset(num_seeds=1)
def _crosslingual_batch(batch, seed, vocabulary, switch_prob, lang_tags, dedup, start, unit_rate_hz, speech_marker):
    who = "crosslingual_interleave"
    batch = {k: as_ragged(v) for k, v in batch.items()}
    batch = {k: v.with_row_splits_dtype(tf.int64) if isinstance(v, tf.RaggedTensor) else v for k, v in batch.items()}
    a_start = batch["a_sentence_start"]
    num_rows = a_start.nrows()
    ids = batch["id"] if "id" in batch else tf.fill([num_rows], "")
    counts = [batch[f"{s}_sentence_{k}"].row_lengths() for s in SIDES for k in ("start", "end")]
    same = tf.reduce_all(tf.equal(tf.stack(counts), counts[0]), axis=0)
    checks = [tf.debugging.Assert(tf.reduce_all(same), [
        f"{who}: paired record(s)", tf.boolean_mask(ids, tf.logical_not(same)),
        "sentence counts differ between a start/end and b start/end"])]
    if unit_rate_hz is not None:
        rate = tf.fill([num_rows], tf.constant(float(unit_rate_hz), tf.float64))
    else:
        if "unit_rate_hz" not in batch:
            raise ValueError(f"{who}: records have no 'unit_rate_hz' feature; pass unit_rate_hz=...")
        rate = tf.cast(batch["unit_rate_hz"], tf.float64)
        checks.append(tf.debugging.Assert(tf.reduce_all(rate > 0), [
            f"{who}: record(s)", tf.boolean_mask(ids, rate <= 0), "have unit_rate_hz <= 0"]))
    with tf.control_dependencies(checks):
        batch = {k: tf.identity(v) for k, v in batch.items()}

    # sides per sentence, flat over the batch
    sentence_row = batch["a_sentence_start"].value_rowids()
    on_b = tf.equal(sentence_sides_rows(batch["a_sentence_start"].row_splits, seed, switch_prob, start), 1)

    # frames of each sentence in one stream: all a units, then all b units
    stream, bounds = [], []
    offset = tf.constant(0, tf.int64)
    for side in SIDES:
        units = batch[f"{side}_units"]
        frames_per_row = tf.cast(units.row_lengths(), tf.int32)
        lo, hi, _ = word_frames(batch[f"{side}_sentence_start"].flat_values,
                                batch[f"{side}_sentence_end"].flat_values,
                                tf.gather(rate, sentence_row), tf.gather(frames_per_row, sentence_row))
        base = tf.cast(tf.gather(units.row_starts() + offset, sentence_row), tf.int32)
        bounds.append((lo + base, hi + base))
        stream.append(units.flat_values)
        offset += tf.size(units.flat_values, out_type=tf.int64)
    lo = tf.where(on_b, bounds[1][0], bounds[0][0])
    hi = tf.where(on_b, bounds[1][1], bounds[0][1])
    frames = tf.ragged.range(lo, hi)
    values = tf.gather(tf.concat(stream, 0), frames.flat_values)

    # runs: consecutive sentences of one side within a record; dedup never crosses a run
    new_run = dedup_rows(on_b, sentence_row)
    run_of_sentence = tf.cumsum(tf.cast(new_run, tf.int64)) - 1
    run_ids = tf.gather(run_of_sentence, frames.value_rowids())
    if dedup:
        keep = dedup_rows(values, run_ids)
        values, run_ids = tf.boolean_mask(values, keep), tf.boolean_mask(run_ids, keep)
    run_first = tf.where(new_run)[:, 0]
    num_runs = tf.size(run_first, out_type=tf.int64)
    runs = tf.RaggedTensor.from_value_rowids(tf.cast(vocabulary.units_to_ids_tf(values), tf.int32), run_ids,
                                             nrows=num_runs, validate=False)
    if lang_tags:
        run_row = tf.gather(sentence_row, run_first)
        row_tags = {side: tf.map_fn(lambda lang: _lang_tag(vocabulary, lang), batch[f"{side}_lang"],
                                    fn_output_signature=tf.int32) for side in SIDES}  # the vocab maps one tag per call
        tags = tf.where(tf.gather(on_b, run_first), tf.gather(row_tags["b"], run_row),
                        tf.gather(row_tags["a"], run_row))
        runs = tf.concat([tf.RaggedTensor.from_tensor(tf.reshape(tags, [-1, 1])), runs], axis=1)
    body = tf.RaggedTensor.from_value_rowids(runs.flat_values, tf.gather(sentence_row, tf.gather(
        tf.cast(run_first, tf.int64), runs.value_rowids())), nrows=num_rows, validate=False)
    return _batch_examples({"id": ids}, body, vocabulary, vocabulary.speech_marker_id if speech_marker else None)


def side_example(
    ex, vocabulary, side: str, dedup: bool = True, lang_tags: bool = False, speech_marker: bool = True
) -> dict:
    """One whole side of a paired record: `[Speech] [LANG]? <all its units> EOS`."""
    _check_choice("side", side, SIDES, "monolingual_side")
    _require(ex, [f"{side}_units"] + ([f"{side}_lang"] if lang_tags else []), "monolingual_side")
    parts = [_speech_marker(vocabulary, speech_marker)]
    if lang_tags:
        parts.append(_one(_lang_tag(vocabulary, ex[f"{side}_lang"])))
    parts.append(unit_token_ids(ex[f"{side}_units"], vocabulary, dedup))
    return finish_example(ex, tf.concat(parts, 0), vocabulary)


def monolingual_side(
    dataset: tf.data.Dataset,
    vocabulary=None,
    side: str = "a",
    dedup: bool = True,
    lang_tags: bool = False,
    speech_marker: bool = True,
    output_features=None,
) -> tf.data.Dataset:
    """The monolingual baseline: every paired record becomes its side-`side` recording (all of
    its units, pauses between sentences included), same format as `crosslingual_interleave`."""
    _check_choice("side", side, SIDES, "monolingual_side")
    vocabulary = _vocab(vocabulary, output_features, "monolingual_side")
    return dataset.map(
        lambda ex: side_example(ex, vocabulary, side, dedup, lang_tags, speech_marker),
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def both_sides(
    dataset: tf.data.Dataset,
    vocabulary=None,
    dedup: bool = True,
    lang_tags: bool = False,
    speech_marker: bool = True,
    output_features=None,
) -> tf.data.Dataset:
    """The "EN+FR mixed" baseline: each paired record yields TWO examples, side a then side b
    (each as `monolingual_side`, both keeping the record's `id`), so the model sees both
    languages and the same content, but never within one sequence. Shuffling later in the
    SeqIO pipeline separates the two. A flat_map of pure TF ops (checkpointable)."""
    vocabulary = _vocab(vocabulary, output_features, "both_sides")

    def fn(ex):
        a = side_example(ex, vocabulary, "a", dedup, lang_tags, speech_marker)
        b = side_example(ex, vocabulary, "b", dedup, lang_tags, speech_marker)
        return tf.data.Dataset.from_tensors(a).concatenate(tf.data.Dataset.from_tensors(b))

    return dataset.flat_map(fn)


# --- the record fields each preprocessor reads (registration checks them) ----------------------
def _paired_fields(a):
    return ["a_units", "a_sentence_start", "a_sentence_end", "b_units", "b_sentence_start",
            "b_sentence_end", *(["unit_rate_hz"] if a["unit_rate_hz"] is None else []),
            *(["a_lang", "b_lang"] if a["lang_tags"] else [])]


def _side_fields(sides):
    return lambda a: [f"{s}_units" for s in sides(a)] + ([f"{s}_lang" for s in sides(a)] if a["lang_tags"] else [])


for _fn in (speech_only, speech_only_batches):
    declare_fields(_fn, lambda a: [a["units_key"]])
for _fn in (text_only, text_only_batches):
    declare_fields(_fn, lambda a: [a["text_key"]])
for _fn in (crosslingual_interleave, crosslingual_interleave_batches):
    declare_fields(_fn, _paired_fields)
declare_fields(monolingual_side, _side_fields(lambda a: [a["side"]]))
declare_fields(both_sides, _side_fields(lambda a: list(SIDES)))


# --- SpiritLM expressive merge ---------------------------------------------------------------
# SpiritLM's own rates for ORDERING its expressive strings (source: facebookresearch/spiritlm
# spiritlm/speech_tokenizer/spiritlm_tokenizer.py, `units_to_string` and `SpiritLMTokenizer`
# defaults: hubert_rate=24.99, pitch_rate=12.5, style_rate=1). 24.99 is SpiritLM's, not the
# audio's: mHuBERT-25Hz frames are 40 ms (25 Hz, the corpus `unit_rate_hz`); with 25.0 the
# order differs from SpiritLM's strings from 100 s of audio on.
SPIRITLM_HUBERT_ORDER_RATE_HZ = 24.99
SPIRITLM_PITCH_ORDER_RATE_HZ = 12.5
SPIRITLM_STYLE_ORDER_RATE_HZ = 1.0


def _expressive_rows(units: tf.RaggedTensor, pitch: tf.RaggedTensor, style: tf.RaggedTensor, vocabulary,
                     hubert_rate: float, pitch_rate: float, style_rate: float) -> tf.RaggedTensor:
    """int32 ragged [B, None]: each row's three streams merged by time (`expressive_tokens`' rule)."""
    times, rows, ids = [], [], []
    for values, rate, dedup, to_ids in (
        (style, style_rate, False, vocabulary.style_to_ids_tf),
        (pitch, pitch_rate, True, vocabulary.pitch_to_ids_tf),
        (units, hubert_rate, True, vocabulary.units_to_ids_tf),
    ):
        values = values.with_row_splits_dtype(tf.int64)
        flat, row = values.flat_values, values.value_rowids()
        index = tf.range(tf.size(flat, out_type=tf.int64)) - tf.gather(values.row_starts(), row)  # frame in row
        keep = dedup_rows(flat, row) if dedup else tf.ones_like(flat, tf.bool)
        index, row, flat = (tf.boolean_mask(x, keep) for x in (index, row, flat))
        times.append(tf.cast(index, tf.float64) / tf.constant(float(rate), tf.float64))
        rows.append(row)
        ids.append(tf.cast(to_ids(flat), tf.int32))
    times, rows, ids = tf.concat(times, 0), tf.concat(rows, 0), tf.concat(ids, 0)
    # (row, time) order; ties keep the concatenation order style, pitch, HuBERT (two stable sorts)
    order = tf.argsort(times, stable=True)
    order = tf.gather(order, tf.argsort(tf.gather(rows, order), stable=True))
    return tf.RaggedTensor.from_value_rowids(tf.gather(ids, order), tf.gather(rows, order),
                                             nrows=units.nrows(out_type=tf.int64), validate=False)


def expressive_tokens(
    units,
    pitch,
    style,
    vocabulary,
    hubert_rate: float = SPIRITLM_HUBERT_ORDER_RATE_HZ,
    pitch_rate: float = SPIRITLM_PITCH_ORDER_RATE_HZ,
    style_rate: float = SPIRITLM_STYLE_ORDER_RATE_HZ,
) -> tf.Tensor:
    """int32 [n]: ONE record's HuBERT, pitch and style streams (int [frames] each, BEFORE dedup)
    merged into one id sequence by time (no marker/EOS); `expressive_merge`'s rule on a batch of one.

    SpiritLM's rule (`units_to_string`, source: spiritlm/speech_tokenizer/spiritlm_tokenizer.py):
    a token's time is its frame index i (in its own stream, before dedup) divided by its
    stream's rate, `i / rate` in float64; HuBERT and pitch are run-length deduplicated (a
    kept token has the time of its run's first frame), style is not; a stable sort by time
    over the concatenation [style, pitch, HuBERT] gives, at equal times, the order style,
    pitch, HuBERT. Rates are ORDERING rates: by default SpiritLM's (HuBERT 24.99 Hz, pitch
    12.5 Hz, style 1 Hz), so the ids are those of SpiritLM's strings exactly; pass
    `hubert_rate=25.0` for the true mHuBERT rate (orders differ from 100 s of audio on).
    """
    rows = [tf.RaggedTensor.from_tensor(tf.reshape(_dense(x), [1, -1])) for x in (units, pitch, style)]
    return _expressive_rows(*rows, vocabulary, hubert_rate, pitch_rate, style_rate).flat_values


def _check_rates(who: str, **rates) -> None:
    for name, rate in rates.items():
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not rate > 0:
            raise ValueError(f"{who}: {name} must be a number > 0, got {rate!r}")


def expressive_merge(
    dataset: tf.data.Dataset,
    vocabulary=None,
    hubert_rate: float = SPIRITLM_HUBERT_ORDER_RATE_HZ,
    pitch_rate: float = SPIRITLM_PITCH_ORDER_RATE_HZ,
    style_rate: float = SPIRITLM_STYLE_ORDER_RATE_HZ,
    output_features=None,
    batch_records: int = DEFAULT_BATCH_RECORDS,
) -> tf.data.Dataset:
    """SpiritLM EXPRESSIVE sequences: `[Speech] <style/pitch/HuBERT merged by time> EOS` from a
    record's frame-level `units`, `pitch` and `style` (int64 [frames] each; rule and rates:
    `expressive_tokens`; defaults reproduce SpiritLM's strings: HuBERT 24.99 Hz as SpiritLM
    orders, not the true 25 Hz). Runs `expressive_merge_batches` over `batch_records`
    records at a time (`vectorized`). ValueError for a rate <= 0 or records lacking a stream."""
    return vectorized(dataset, lambda batches: expressive_merge_batches(
        batches, vocabulary, hubert_rate, pitch_rate, style_rate, output_features), batch_records)


def expressive_merge_batches(
    batches: tf.data.Dataset,
    vocabulary=None,
    hubert_rate: float = SPIRITLM_HUBERT_ORDER_RATE_HZ,
    pitch_rate: float = SPIRITLM_PITCH_ORDER_RATE_HZ,
    style_rate: float = SPIRITLM_STYLE_ORDER_RATE_HZ,
    output_features=None,
) -> tf.data.Dataset:
    """`expressive_merge` on a dataset of ragged record batches (`register_corpus_task(batched=True)`):
    each batch becomes the batch of its records' examples (id, targets, modality, loss_mask)."""
    who = "expressive_merge"
    _check_rates(who, hubert_rate=hubert_rate, pitch_rate=pitch_rate, style_rate=style_rate)
    vocabulary = _vocab(vocabulary, output_features, who)
    _require(batches.element_spec, ["units", "pitch", "style"], who)

    def fn(batch):
        streams = [as_ragged(batch[k]) for k in ("units", "pitch", "style")]
        body = _expressive_rows(*streams, vocabulary, hubert_rate, pitch_rate, style_rate)
        return _batch_examples(batch, body, vocabulary, vocabulary.speech_marker_id)

    return batches.map(fn, num_parallel_calls=tf.data.AUTOTUNE)
