"""Denoising objectives for a decoder: T5 span corruption, prefix LM and UL2 mixtures of them.

mSLAM (SEEDS.md §4) pretrains with span masking on text and speech; for a decoder-only
model the standard carry-over is span corruption written as ONE sequence (T5 §3.1.4 /
UL2 §3.1.2, the "decoder-only" form): the corrupted input, then the sentinel-delimited
spans, with the loss on the spans only (a prefix LM over its own input):

    [EN][Speech] u1 u2 <extra_id_0> u5 u6 <extra_id_1> u9 | <extra_id_0> u3 u4 <extra_id_1> u7 u8 EOS
    `-- prefix --' `------------- input (loss 0) --------' `------- targets (loss 1) ---------------'

Input examples are what the SLM preprocessors emit (`interleave.speech_only_batches`,
`text_only_batches`, ...): `targets` = leading markers + body + EOS. The body (units
after dedup, SentencePiece ids, characters with a char-level SentencePiece model, or an
interleaved mix) is corrupted; the PREFIX (the leading run of marker ids: `[Speech]`,
`[Text]`, language tags) stays in front of every output so each example says its modality,
and EOS closes the targets. Markers inside an interleaved body are ordinary tokens: they
stay where they are in the input or move with their span into the targets, so the
restored sequence has them exactly where the modality changes.

Output (`id`, `targets`, `modality`, `loss_mask`; other non-token features of the input are
copied onto every chunk):
    targets    prefix + input-with-sentinels + targets-with-sentinels + EOS
    loss_mask  0 on prefix and input, 1 on the targets part and EOS
    modality   `vocabulary.modality_ids_tf(targets)` (sentinels are MARKER)
Every input token appears exactly once, in the input or in a span, so the input with each
sentinel replaced by its span is the original body (`restore_body`).

Rules (a `Denoiser` each):
  * `span` (T5's `random_spans_noise_mask`, t5/data/preprocessors.py): a chunk of n tokens
    gets round(max(n,2) * noise_density) noise tokens (clipped to [1, max(n,2)-1]) in
    max(1, round(noise / mean_noise_span_length)) spans (at most the non-noise count, where T5's
    rule itself fails); the noise and non-noise tokens are
    each cut into that many non-empty spans uniformly at random (a random composition), and
    the spans alternate non-noise, noise, ... starting with non-noise. Rounding is float32
    round-half-to-even like T5's `tf.round`. Noise span k becomes sentinel k (T5's order:
    `<extra_id_0>` first, the vocabulary's `sentinel_id`). n <= 1 gets no noise.
  * `prefix_lm` (UL2's S-denoiser): the last t tokens are the target, t uniform in
    [1, max(1, min(n - 1, 2 * round(n * noise_density) - 1))] so the mean target share is
    `noise_density`; no sentinels.
A UL2 mixture (`UL2_DENOISERS`, `gin/data/ul2.gin`) samples one denoiser per example by
`rate` (all its chunks use it, each chunk sized for that denoiser). Which denoisers a task uses is gin configuration: `denoising.denoisers = [...]`
(dicts or `Denoiser`s), read when a dataset is built, for tasks that do not pass their own.

Length: with a sequence length L (SeqIO passes it) the body is cut into consecutive chunks
of the largest size whose corrupted form fits (prefix + n + 2 * spans(n) + EOS <= L under the
example's denoiser), each becoming one example, so the split after the preprocessors never
cuts a span from its sentinel. A later chunk's prefix says what is in effect where it starts
(an interleaved body may have switched to [Text] or to another language tag since).
Nothing is dropped. L also fixes the most spans an example can have; more than the
vocabulary's sentinels is a ValueError here (T5 would silently run into other ids). Without
L a whole example is one chunk and too many spans fail a tf.debugging.Assert.

Randomness: one `seqio.map_over_dataset(num_seeds=1)` seed per record batch (chunk c of the
batch takes element c of each stateless draw), so the same seed gives the same spans and a
restored data iterator continues them exactly. The per-record names (`denoise`,
`span_corruption`, `prefix_lm`) run the batched step through `common.vectorized`.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

from slm_jax.contract import ALIGNED_TASK_FEATURES, MODALITY_MARKER
from slm_jax.data.preprocessors.common import DEFAULT_BATCH_RECORDS, as_ragged, unwrap_partial, vectorized
from slm_jax.data.preprocessors.interleave import _vocab
from slm_jax.data.tokenizers.token_space import sentinel_block
from slm_jax.gin_utils import ConfigError

KINDS = ("span", "prefix_lm")
EXAMPLE_KEYS = ("id", "targets", "modality", "loss_mask")
WHO = "denoise"


@dataclasses.dataclass(frozen=True)
class Denoiser:
    """One denoising rule (module docstring). `rate`: relative sampling weight in a mixture, > 0;
    `mean_noise_span_length` is read by `span` only.

    Raises ConfigError (a ValueError) naming the field for a bad value."""
    kind: str = "span"
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0
    rate: float = 1.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"Denoiser.kind must be one of {list(KINDS)}, got {self.kind!r}")
        for name, value, lo_open in (("noise_density", self.noise_density, True), ("rate", self.rate, True),
                                     ("mean_noise_span_length", self.mean_noise_span_length, True)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                    or value <= 0:
                raise ConfigError(f"Denoiser.{name} must be a number > 0, got {value!r}")
        if self.noise_density >= 1:
            raise ConfigError(f"Denoiser.noise_density must be < 1, got {self.noise_density!r}")
        if self.kind == "span" and self.mean_noise_span_length < 1:
            raise ConfigError(f"Denoiser.mean_noise_span_length must be >= 1, got {self.mean_noise_span_length!r}")

    def __repr__(self):
        shown = ("kind", "noise_density", "mean_noise_span_length", "rate") if self.kind == "span" else \
            ("kind", "noise_density", "rate")
        return f"Denoiser({', '.join(f'{k}={getattr(self, k)!r}' for k in shown)})"

    def spans(self, n: int) -> int:
        """Sentinels a chunk of n tokens gets (0 for prefix_lm), T5's float32 arithmetic."""
        if self.kind != "span":
            return 0
        noise = _noise_tokens(n, self.noise_density)
        spans = max(int(np.round(np.float32(noise) / np.float32(self.mean_noise_span_length))), 1)
        return min(spans, max(n, 2) - noise)


def _noise_tokens(n: int, density: float) -> int:
    n2 = max(n, 2)
    return min(max(int(np.round(np.float32(n2) * np.float32(density))), 1), n2 - 1)


# T5's default span corruption (T5 §3.1.4) and UL2's mixture of denoisers (UL2 §3.1.2, Table:
# R: (mu 3, r 0.15), (mu 8, r 0.15); X: (3, 0.5), (8, 0.5), (64, 0.15), (64, 0.5); S: prefix LM r 0.25),
# equal rates per denoiser.
T5_SPAN_CORRUPTION = (Denoiser("span", 0.15, 3.0),)
UL2_DENOISERS = (
    Denoiser("span", 0.15, 3.0), Denoiser("span", 0.15, 8.0),
    Denoiser("span", 0.5, 3.0), Denoiser("span", 0.5, 8.0), Denoiser("span", 0.15, 64.0), Denoiser("span", 0.5, 64.0),
    Denoiser("prefix_lm", 0.25),
)


def as_denoisers(spec, where: str = "denoisers") -> tuple[Denoiser, ...]:
    """`Denoiser`s from a sequence of `Denoiser`s or dicts with its field names (gin writes dicts).
    ConfigError (a ValueError) naming the entry and field otherwise."""
    if isinstance(spec, (Denoiser, Mapping)):
        spec = [spec]
    if not isinstance(spec, Sequence) or isinstance(spec, (str, bytes)) or not spec:
        raise ConfigError(f"{where}: expected a non-empty list of denoisers, got {spec!r}")
    out = []
    fields = {f.name for f in dataclasses.fields(Denoiser)}
    for i, entry in enumerate(spec):
        if isinstance(entry, Denoiser):
            out.append(entry)
            continue
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}[{i}]: expected a dict or Denoiser, got {entry!r}")
        unknown = sorted(set(entry) - fields)
        if unknown:
            raise ConfigError(f"{where}[{i}]: unknown field(s) {unknown}; known: {sorted(fields)}")
        try:
            out.append(Denoiser(**entry))
        except ConfigError as err:
            raise ConfigError(f"{where}[{i}]: {err}") from None
    return tuple(out)


@gin.configurable
def denoising(denoisers=T5_SPAN_CORRUPTION) -> tuple[Denoiser, ...]:
    """The denoisers of tasks that do not pass their own (gin: `denoising.denoisers = [...]`,
    a list of dicts with `Denoiser`'s fields; `gin/data/ul2.gin` holds UL2's mixture)."""
    return as_denoisers(denoisers, "denoising.denoisers")


def gin_denoisers_of(task) -> list[dict] | None:
    """The gin-configured denoisers (`denoising()`, as dicts) when one of `task`'s preprocessors
    reads them (`denoise_batches` / `denoise` without their own `denoisers`), else None: what a
    resume compares (another rule changes the data stream)."""
    for preprocessor in getattr(task, "preprocessors", ()):
        fn, _, bound = unwrap_partial(preprocessor)
        if fn in (denoise_batches, denoise) and bound.get("denoisers") is None:
            return [dataclasses.asdict(d) for d in denoising()]
    return None


def max_body_lengths(length: int, denoisers: Sequence[Denoiser]) -> np.ndarray:
    """int32 [length + 1]: entry m is the largest body n with n + 2 * spans(n) <= m (spans at the
    largest of the denoisers' rules): how many body tokens fit in m slots once corrupted."""
    out = np.zeros(length + 1, np.int32)
    n = 0
    for m in range(length + 1):
        while n + 1 + 2 * max(d.spans(n + 1) for d in denoisers) <= m:
            n += 1
        out[m] = n
    return out


def check_sentinel_budget(length: int, denoisers: Sequence[Denoiser], num_sentinels: int,
                          tables: np.ndarray | None = None) -> None:
    """ConfigError when a chunk at sequence length `length` may need more sentinels than exist.
    `tables`: each denoiser's `max_body_lengths(length, [d])`, when already computed."""
    for i, d in enumerate(denoisers):
        table = max_body_lengths(length, [d]) if tables is None else tables[i]
        n = int(table[length - 1]) if length > 1 else 0  # the largest chunk: a prefix of 0 markers + EOS
        if d.spans(n) > num_sentinels:
            raise ConfigError(
                f"{WHO}: at sequence length {length} a chunk of {n} tokens gets {d.spans(n)} spans under {d}, but the "
                f"vocabulary has {num_sentinels} sentinels; give it num_sentinels >= {d.spans(n)} "
                "(SpeechTextVocabulary(num_sentinels=...)) or use a shorter sequence length")


# --- the batched step ------------------------------------------------------------------------
def denoise_batches(batches: tf.data.Dataset, sequence_length: Mapping[str, int] | None = None,
                    output_features=None, vocabulary=None, denoisers=None) -> tf.data.Dataset:
    """Corrupts every example of every ragged batch (module docstring); `denoisers`: a list of
    `Denoiser`s / dicts, None for the gin-configured `denoising()`. Features other than
    `EXAMPLE_KEYS` (e.g. record fields a task format keeps) are copied onto every chunk.
    Raises ConfigError for a bad denoiser list, a vocabulary without sentinels or a sequence
    length at which the sentinels could run out; ValueError for per-token features it cannot
    cut (`patch_ids`); in the graph, a tf.debugging.Assert names examples that do not end with
    EOS, carry a loss mask with zeros, have a prefix that leaves no room, or (without a
    sequence length) need more sentinels than exist."""
    vocabulary = _vocab(vocabulary, output_features, WHO)
    denoisers = denoising() if denoisers is None else as_denoisers(denoisers)
    first_sentinel, num_sentinels = sentinel_block(vocabulary)
    if not num_sentinels and any(d.kind == "span" for d in denoisers):
        raise ConfigError(f"{WHO}: vocabulary {vocabulary!r} has no sentinel ids; build it with "
                          "SpeechTextVocabulary(..., num_sentinels=100)")
    spec = batches.element_spec
    uncuttable = sorted(set(spec) & set(ALIGNED_TASK_FEATURES) - set(EXAMPLE_KEYS))
    if uncuttable or "targets" not in spec:
        raise ValueError(f"{WHO}: expects examples with {list(EXAMPLE_KEYS)} (e.g. from interleave.speech_only_batches), "
                         f"got features {sorted(spec)}; unsupported per-token features: {uncuttable}")
    length = (sequence_length or {}).get("targets")
    if length is not None:
        length = int(length)
        tables = np.stack([max_body_lengths(length, [d]) for d in denoisers])
        check_sentinel_budget(length, denoisers, num_sentinels, tables)
    else:
        tables = None
    return _denoise_batch(batches, vocabulary=vocabulary, denoisers=denoisers, tables=tables,
                          sentinel_hi=first_sentinel + num_sentinels - 1, num_sentinels=num_sentinels)


@seqio.map_over_dataset(num_seeds=1)
def _denoise_batch(batch, seed, vocabulary, denoisers, tables, sentinel_hi, num_sentinels):
    seed = tf.cast(seed, tf.int64)
    batch = {k: as_ragged(v) for k, v in batch.items()}
    targets = batch["targets"].with_row_splits_dtype(tf.int64)
    num_rows = targets.nrows()
    ids = batch["id"] if "id" in batch else tf.fill([num_rows], "")
    sizes = targets.row_lengths()
    flat = tf.cast(targets.flat_values, tf.int32)
    is_marker = tf.equal(vocabulary.modality_ids_tf(flat), MODALITY_MARKER)
    # prefix: the leading run of markers, never the last token (EOS)
    token_in_row = tf.range(tf.size(flat, out_type=tf.int64)) - tf.repeat(targets.row_starts(), sizes)
    first_plain = tf.math.unsorted_segment_min(tf.where(is_marker, tf.int64.max, token_in_row),
                                               targets.value_rowids(), num_rows)
    leading = tf.minimum(first_plain, sizes)  # rows of markers only: their length
    prefix_len = tf.minimum(leading, tf.maximum(sizes - 1, 0))
    body_len = tf.maximum(sizes - prefix_len - 1, 0)
    last = tf.gather(flat, tf.maximum(targets.row_limits() - 1, 0))
    ends_with_eos = (sizes > 0) & tf.equal(last, vocabulary.eos_id)
    checks = [tf.debugging.Assert(tf.reduce_all(ends_with_eos), [
        f"{WHO}: example(s)", tf.boolean_mask(ids, ~ends_with_eos), "do not end with EOS", vocabulary.eos_id],
        summarize=8)]
    if "loss_mask" in batch:
        zeros = tf.reduce_any(tf.equal(batch["loss_mask"], 0), axis=1)
        checks.append(tf.debugging.Assert(tf.reduce_all(~zeros), [
            f"{WHO}: example(s)", tf.boolean_mask(ids, zeros),
            "have a loss mask with zeros (a prompt?); denoising sets its own loss mask"], summarize=8))

    # one denoiser per example (UL2 draws per example), so its chunks fit its own rule
    if len(denoisers) > 1:
        logits = tf.math.log(tf.constant([[d.rate for d in denoisers]], tf.float64))
        row_choice = tf.reshape(tf.random.stateless_categorical(logits, tf.cast(num_rows, tf.int32), seed + [0, 1]),
                                [-1])
    else:
        row_choice = tf.zeros([num_rows], tf.int64)
    if tables is not None:
        length = tables.shape[1] - 1
        room = length - prefix_len - 1
        chunk = tf.gather_nd(tf.constant(tables, tf.int64),
                             tf.stack([row_choice, tf.clip_by_value(room, 0, length)], axis=1))
        fits = (room >= 0) & ((chunk > 0) | tf.equal(body_len, 0))
        checks.append(tf.debugging.Assert(tf.reduce_all(fits), [
            f"{WHO}: example(s)", tf.boolean_mask(ids, ~fits), f"have a prefix of markers that leaves no room for a "
            f"corrupted token at sequence length {length}; prefix lengths:", tf.boolean_mask(prefix_len, ~fits)],
            summarize=8))
        chunk = tf.maximum(chunk, 1)
    else:
        chunk = tf.maximum(body_len, 1)
    with tf.control_dependencies(checks):
        body_len = tf.identity(body_len)

    # chunks: consecutive pieces of each body (an empty body keeps one empty chunk)
    chunks_per_row = tf.maximum((body_len + chunk - 1) // chunk, 1)
    chunk_row = tf.repeat(tf.range(num_rows), chunks_per_row)
    index_in_row = tf.range(tf.reduce_sum(chunks_per_row)) - tf.gather(tf.cumsum(chunks_per_row, exclusive=True),
                                                                        chunk_row)
    chunk_size = tf.gather(chunk, chunk_row)
    n = tf.clip_by_value(tf.gather(body_len, chunk_row) - index_in_row * chunk_size, 0, chunk_size)
    starts = tf.gather(targets.row_starts() + prefix_len, chunk_row) + index_in_row * chunk_size
    positions = tf.ragged.range(starts, starts + n)
    x = tf.gather(flat, positions.flat_values)
    num_chunks = tf.size(n, out_type=tf.int64)

    noise = _noise_mask(n, tf.gather(row_choice, chunk_row), seed, denoisers)
    out = _assemble(x, noise["mask"], positions.value_rowids(), num_chunks, noise["uses_sentinels"], sentinel_hi)
    short = out["spans"] > num_sentinels
    checks = [tf.debugging.Assert(~tf.reduce_any(short), [
        f"{WHO}: example(s)", tf.boolean_mask(tf.gather(ids, chunk_row), short), "need",
        tf.boolean_mask(out["spans"], short), f"sentinels but the vocabulary has {num_sentinels}; raise "
        "num_sentinels or set a sequence length (the body is then cut into chunks that fit)"], summarize=8)]
    with tf.control_dependencies(checks):
        corrupted = tf.identity(out["input"])

    prefix = tf.ragged.range(targets.row_starts(), targets.row_starts() + prefix_len)
    prefix = tf.gather(tf.RaggedTensor.from_row_splits(tf.gather(flat, prefix.flat_values), prefix.row_splits),
                       chunk_row)
    prefix = _markers_in_effect(prefix, flat, targets.row_starts(), chunk_row, index_in_row, starts,
                                positions, is_marker, vocabulary)
    eos = tf.RaggedTensor.from_tensor(tf.fill([num_chunks, 1], tf.constant(vocabulary.eos_id, tf.int32)))
    parts = [prefix, corrupted.with_row_splits_dtype(tf.int64), out["targets"].with_row_splits_dtype(tf.int64), eos]
    new_targets = tf.concat(parts, axis=1)
    loss = tf.concat([tf.zeros_like(parts[0]), tf.zeros_like(parts[1]), tf.ones_like(parts[2]),
                      tf.ones_like(parts[3])], axis=1)
    return {
        **{k: tf.gather(v, chunk_row) for k, v in batch.items() if k not in EXAMPLE_KEYS},
        "id": tf.gather(ids, chunk_row),
        "targets": new_targets,
        "modality": new_targets.with_flat_values(tf.cast(vocabulary.modality_ids_tf(new_targets.flat_values),
                                                         tf.int32)),
        "loss_mask": loss,
    }


def _marker_kinds(vocabulary) -> list[tuple[int, int]]:
    """[lo, hi) id ranges of the marker kinds a chunk's prefix restates: [Text]/[Speech], language tags."""
    kinds = [(vocabulary.text_marker_id, vocabulary.speech_marker_id + 1)]
    if getattr(vocabulary, "langs", ()):
        kinds.append((vocabulary.lang_offset, vocabulary.lang_offset + len(vocabulary.langs)))
    return kinds


def _markers_in_effect(prefix, flat, row_starts, chunk_row, index_in_row, starts, positions, is_marker, vocabulary):
    """The prefix of each LATER chunk of an example says what is in effect where the chunk starts:
    each prefix marker of a kind ([Text]/[Speech], language tags) becomes the last marker of that
    kind before the chunk (an interleaved body switches), and is left out when the chunk's own
    leading markers include one of that kind. First chunks keep the example's prefix as it is."""
    later = index_in_row > 0
    num_chunks = tf.size(starts, out_type=tf.int64)
    chunk_of, where = positions.value_rowids(), positions.flat_values
    # the chunk's leading run of markers: positions before its first non-marker token
    offset = where - tf.gather(starts, chunk_of)
    first_plain = tf.math.unsorted_segment_min(tf.where(tf.gather(is_marker, where), tf.int64.max, offset), chunk_of,
                                               num_chunks)
    leading = offset < tf.gather(first_plain, chunk_of)
    values, rows = prefix.flat_values, prefix.value_rowids()
    keep = tf.ones_like(values, tf.bool)
    for lo, hi in _marker_kinds(vocabulary):
        is_kind = (flat >= lo) & (flat < hi)
        count = tf.cumsum(tf.cast(is_kind, tf.int64))  # markers of this kind up to and including each position
        where_kind = tf.concat([tf.where(is_kind)[:, 0], [0]], 0)  # [0]: a safe gather when there are none
        before = starts - 1
        seen = tf.where(before >= 0, tf.gather(count, tf.maximum(before, 0)), 0)
        last_pos = tf.gather(where_kind, tf.maximum(seen - 1, 0))
        valid = later & (seen > 0) & (last_pos >= tf.gather(row_starts, chunk_row))
        in_effect = tf.gather(flat, last_pos)
        token = tf.gather(flat, where)
        chunk_opens_one = later & (tf.math.unsorted_segment_max(
            tf.cast(leading & (token >= lo) & (token < hi), tf.int32), chunk_of, num_chunks) > 0)
        in_prefix = (values >= lo) & (values < hi)
        values = tf.where(in_prefix & tf.gather(valid, rows), tf.gather(in_effect, rows), values)
        keep &= ~(in_prefix & tf.gather(chunk_opens_one, rows))
    return tf.RaggedTensor.from_value_rowids(tf.boolean_mask(values, keep), tf.boolean_mask(rows, keep),
                                             nrows=prefix.nrows())


def _noise_mask(n: tf.Tensor, choice: tf.Tensor, seed: tf.Tensor, denoisers: Sequence[Denoiser]) -> dict:
    """Per chunk (lengths `n`, int64 [C]; `choice`: its denoiser's index, int64 [C]): the noise mask
    as flat bool [sum n] and whether the denoiser writes sentinels, bool [C]."""
    num_chunks = tf.size(n, out_type=tf.int64)
    table = lambda values, dtype: tf.gather(tf.constant(values, dtype), choice)  # noqa: E731
    density = table([d.noise_density for d in denoisers], tf.float32)
    mean_span = table([d.mean_noise_span_length for d in denoisers], tf.float32)
    is_span = table([d.kind == "span" for d in denoisers], tf.bool)

    # span rule (T5): counts from max(n, 2), composition of noise / non-noise into `spans` parts
    n2 = tf.maximum(n, 2)
    noise = tf.clip_by_value(tf.cast(tf.round(tf.cast(n2, tf.float32) * density), tf.int64), 1, n2 - 1)
    spans = tf.maximum(tf.cast(tf.round(tf.cast(noise, tf.float32) / mean_span), tf.int64), 1)
    spans = tf.minimum(spans, n2 - noise)  # only where T5's rule has no answer (more spans than plain tokens)
    noise_parts = random_composition(noise, spans, seed + [0, 2])
    plain_parts = random_composition(n2 - noise, spans, seed + [0, 3])
    lengths = tf.stack([plain_parts, noise_parts], axis=2).merge_dims(1, 2)  # plain, noise, plain, noise, ...
    parity = tf.math.floormod(tf.range(tf.size(lengths.flat_values, out_type=tf.int64)), 2)
    span_mask = tf.RaggedTensor.from_row_lengths(tf.equal(tf.repeat(parity, lengths.flat_values), 1), n2)
    span_mask = tf.ragged.boolean_mask(span_mask, tf.ragged.range(n2) < tf.expand_dims(n, 1))  # T5 cuts to n

    # prefix LM (UL2 S): the last t tokens, t uniform in [1, t_max]
    t_max = tf.maximum(tf.minimum(n - 1, 2 * tf.cast(tf.round(tf.cast(n, tf.float32) * density), tf.int64) - 1), 1)
    u = tf.random.stateless_uniform([num_chunks], seed + [0, 4], dtype=tf.float64)
    t = tf.minimum(1 + tf.cast(tf.floor(u * tf.cast(t_max, tf.float64)), tf.int64), n)
    prefix_mask = tf.ragged.range(n) >= tf.expand_dims(n - t, 1)

    mask = tf.where(tf.gather(is_span, span_mask.value_rowids()), span_mask.flat_values, prefix_mask.flat_values)
    return {"mask": mask, "uses_sentinels": is_span}


def random_composition(total: tf.Tensor, parts: tf.Tensor, seed: tf.Tensor) -> tf.RaggedTensor:
    """int64 ragged [C, parts[c]]: `total[c]` cut into `parts[c]` positive integers uniformly at
    random among all such cuts (T5's `_random_segmentation`: parts-1 of the total-1 gaps chosen
    uniformly), for every c at once. Requires 1 <= parts <= total."""
    gaps = tf.maximum(total - 1, 0)
    u = tf.random.stateless_uniform([tf.reduce_sum(gaps)], seed, dtype=tf.float64)
    gap_row = tf.repeat(tf.range(tf.size(total, out_type=tf.int64)), gaps)
    order = tf.cast(tf.argsort(tf.cast(gap_row, tf.float64) + u, stable=True), tf.int64)  # rows in order, random within
    gap_start = tf.cumsum(gaps, exclusive=True)
    rank = tf.scatter_nd(tf.expand_dims(order, 1), tf.range(tf.size(order, out_type=tf.int64)) -
                         tf.gather(gap_start, tf.gather(gap_row, order)), tf.shape(order, out_type=tf.int64))
    chosen = rank < tf.gather(parts - 1, gap_row)
    gap_index = tf.range(tf.size(gap_row, out_type=tf.int64)) - tf.gather(gap_start, gap_row)
    cut_rows = tf.boolean_mask(gap_row, chosen)
    cuts = tf.RaggedTensor.from_value_rowids(tf.boolean_mask(gap_index, chosen) + 1, cut_rows,
                                             nrows=tf.size(total, out_type=tf.int64))
    # boolean_mask keeps gap order, so each row's cut points are ascending
    zero = tf.zeros([tf.size(total), 1], tf.int64)
    bounds = tf.concat([tf.RaggedTensor.from_tensor(zero), cuts, tf.expand_dims(total, 1)], axis=1)
    return bounds[:, 1:] - bounds[:, :-1]


def _assemble(x, mask, rows, num_chunks, uses_sentinels, sentinel_hi) -> dict:
    """Flat chunk tokens `x` int32 [N] with their noise `mask` and chunk ids `rows` -> the corrupted
    input and the targets part, ragged [C, None] each, and the sentinels each chunk used, int64 [C]."""
    prev = tf.concat([[False], mask[:-1]], 0) & tf.concat([[False], tf.equal(rows[1:], rows[:-1])], 0)
    start = mask & ~prev
    sentinel_start = start & tf.gather(uses_sentinels, rows)
    starts_per_chunk = tf.math.unsorted_segment_sum(tf.cast(sentinel_start, tf.int64), rows, num_chunks)
    k = tf.cumsum(tf.cast(sentinel_start, tf.int64)) - 1 - tf.gather(tf.cumsum(starts_per_chunk, exclusive=True),
                                                                      rows)
    sentinel = tf.cast(sentinel_hi - k, tf.int32)
    keep = ~mask | sentinel_start
    corrupted = tf.RaggedTensor.from_value_rowids(tf.boolean_mask(tf.where(mask, sentinel, x), keep),
                                                  tf.boolean_mask(rows, keep), nrows=num_chunks)
    copies = tf.cast(mask, tf.int64) * (1 + tf.cast(sentinel_start, tf.int64))
    source = tf.repeat(tf.range(tf.size(x, out_type=tf.int64)), copies)
    copy_no = tf.range(tf.size(source, out_type=tf.int64)) - tf.repeat(tf.cumsum(copies, exclusive=True), copies)
    first_of_span = tf.equal(copy_no, 0) & tf.gather(sentinel_start, source)
    spans = tf.RaggedTensor.from_value_rowids(
        tf.where(first_of_span, tf.gather(sentinel, source), tf.gather(x, source)), tf.gather(rows, source),
        nrows=num_chunks)
    return {"input": corrupted, "targets": spans, "spans": starts_per_chunk}


# --- named forms ---------------------------------------------------------------------------------
def span_corruption_batches(batches: tf.data.Dataset, sequence_length=None, output_features=None, vocabulary=None,
                            noise_density: float = 0.15, mean_noise_span_length: float = 3.0) -> tf.data.Dataset:
    """T5 span corruption alone (`denoise_batches` with one `span` denoiser)."""
    return denoise_batches(batches, sequence_length, output_features, vocabulary,
                           [Denoiser("span", noise_density, mean_noise_span_length)])


def prefix_lm_batches(batches: tf.data.Dataset, sequence_length=None, output_features=None, vocabulary=None,
                      noise_density: float = 0.25) -> tf.data.Dataset:
    """UL2's S-denoiser alone: loss on a random suffix of mean share `noise_density`."""
    return denoise_batches(batches, sequence_length, output_features, vocabulary, [Denoiser("prefix_lm", noise_density)])


def denoise(dataset: tf.data.Dataset, sequence_length=None, output_features=None, vocabulary=None, denoisers=None,
            batch_records: int = DEFAULT_BATCH_RECORDS) -> tf.data.Dataset:
    """`denoise_batches` on a dataset of single examples, `batch_records` examples per draw."""
    return vectorized(dataset, lambda b: denoise_batches(b, sequence_length, output_features, vocabulary, denoisers),
                      batch_records)


def span_corruption(dataset: tf.data.Dataset, sequence_length=None, output_features=None, vocabulary=None,
                    noise_density: float = 0.15, mean_noise_span_length: float = 3.0,
                    batch_records: int = DEFAULT_BATCH_RECORDS) -> tf.data.Dataset:
    """`span_corruption_batches` on single examples (`common.vectorized`)."""
    return denoise(dataset, sequence_length, output_features, vocabulary,
                   [Denoiser("span", noise_density, mean_noise_span_length)], batch_records)


def prefix_lm(dataset: tf.data.Dataset, sequence_length=None, output_features=None, vocabulary=None,
              noise_density: float = 0.25, batch_records: int = DEFAULT_BATCH_RECORDS) -> tf.data.Dataset:
    """`prefix_lm_batches` on single examples."""
    return denoise(dataset, sequence_length, output_features, vocabulary, [Denoiser("prefix_lm", noise_density)],
                   batch_records)


# --- reading an output back ----------------------------------------------------------------------
def split_example(targets: Sequence[int], loss_mask: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(context, targets part) of one output example: the tokens before the first loss-weighted one
    and the rest (EOS included)."""
    targets, loss_mask = np.asarray(targets), np.asarray(loss_mask)
    weighted = np.flatnonzero(loss_mask)
    cut = int(weighted[0]) if len(weighted) else len(targets)
    return targets[:cut], targets[cut:]


def spans_of(part: Sequence[int], is_sentinel) -> list[tuple[int, list[int]]]:
    """[(sentinel id, its span ids), ...] of a targets part (`<s0> a b <s1> c EOS` -> two spans; the
    final EOS is not part of a span). `is_sentinel(id) -> bool`."""
    out: list[tuple[int, list[int]]] = []
    for i in list(part)[:-1]:
        if is_sentinel(int(i)):
            out.append((int(i), []))
        elif out:
            out[-1][1].append(int(i))
        else:  # prefix LM: the target has no sentinel
            out.append((-1, [int(i)]))
    return out


def restore_body(context: Sequence[int], part: Sequence[int], is_sentinel) -> list[int]:
    """The uncorrupted sequence: `context` with each sentinel replaced by its span from `part`
    (prefix LM: context + part), EOS excluded. ValueError for a sentinel without a span."""
    spans = spans_of(part, is_sentinel)
    if spans and spans[0][0] == -1:
        return [int(i) for i in context] + spans[0][1]
    by_id = dict(spans)
    out: list[int] = []
    for i in context:
        i = int(i)
        if is_sentinel(i):
            if i not in by_id:
                raise ValueError(f"sentinel {i} of the input has no span in the targets")
            out.extend(by_id.pop(i))
        else:
            out.append(i)
    if by_id:
        raise ValueError(f"target spans {sorted(by_id)} have no sentinel in the input")
    return out

