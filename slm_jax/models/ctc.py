"""mSLAM's auxiliary CTC objective: character CTC over the decoder's speech positions.

mSLAM (arXiv 2202.01374) adds a CTC loss on paired speech-transcript data, scoring the
speech encoder's outputs against the transcript's characters. In a decoder framework the
"encoder outputs" are the decoder's final-norm hidden states at speech positions
(`Decoder(cfg)(tokens, segment_ids, positions, return_hidden=True).hidden`), projected by a
`CTCHead` to characters (class 0 = CTC blank).

Pieces (pure Python / JAX; no TensorFlow here, the TF preprocessor that writes the
targets is `slm_jax.data.preprocessors.ctc_targets`, the character vocabulary
`slm_jax.data.tokenizers.chars.CharVocabulary`):

    CTCHead                 hidden [B, T, D] -> fp32 logits [B, T, C]
    gather_segment_frames   packed rows -> per-segment frames, compacted to the left
    ctc_loss_per_segment    packed rows: one CTC problem per packed segment
    ctc_loss_rows           unpacked rows: one CTC problem per row
    ctc_loss_from_batch     the above on a feature-converter batch dict
    ctc_greedy_decode       collapse repeats, drop blanks (inspection)
    ctc_targets_from_packed seqio-packed 1-D targets -> [B, S, L] (see its docstring)

Compaction (how a packed segment becomes a CTC input). A packed row interleaves the
segments' speech frames with text, markers and padding. For each row we build one key
per position,

    key[t] = segment_ids[t]      if speech_mask[t] and 1 <= segment_ids[t] <= S
             S + 1               otherwise,

and take a STABLE argsort of it: the speech frames of segment 1 come first (in their
original order), then those of segment 2, ..., then everything else. With
`counts[s]` = number of speech frames of segment s+1 and `starts` their exclusive cumsum,
frame j of segment s is `order[starts[s] + j]`, valid iff `j < counts[s]`. One gather
then gives `[B, S, F, C]` frames and `[B, S, F]` paddings, where S (max segments per row)
and F (frame budget, default the row length T) are static. Because a row holds at most T
frames in total, F = T never drops a frame; a smaller F saves memory (the gathered
logits are B*S*F*C floats) and segments with more than F speech frames are then skipped
and counted in the stats, never truncated.
"""
from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from slm_jax import contract
from slm_jax.contract import CTC_BLANK_ID, MODALITY_SPEECH
from slm_jax.models.layers import DenseGeneral

Dtype = jnp.dtype

BLANK_ID = CTC_BLANK_ID  # class 0 of every CTC head (slm_jax.data.tokenizers.chars.CharVocabulary)


# --------------------------------------------------------------------------------------
# Head
# --------------------------------------------------------------------------------------


class CTCHead(nn.Module):
    """Hidden states [B, T, embed_dim] -> fp32 CTC logits [B, T, num_classes].

    A `DenseGeneral` whose kernel carries the logical axes ("embed", "vocab") (bias:
    ("vocab",)). Under the default rules 'vocab' is sharded over the 'tensor' mesh axis,
    so `num_classes` must divide by it: use `CharVocabulary.padded_size(tensor)`.
    """

    num_classes: int
    embed_dim: int
    init_std: float = 0.02
    use_bias: bool = True
    dtype: Dtype = jnp.bfloat16
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, hidden: jax.Array) -> jax.Array:
        if hidden.shape[-1] != self.embed_dim:
            raise ValueError(f"CTCHead: hidden dim {hidden.shape[-1]} != embed_dim {self.embed_dim}")
        logits = DenseGeneral((self.embed_dim,), (self.num_classes,), ("embed", "vocab"), self.init_std,
                              use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                              name="proj")(hidden)
        logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
        return logits.astype(jnp.float32)


# --------------------------------------------------------------------------------------
# Compaction
# --------------------------------------------------------------------------------------


def gather_segment_frames(x: jax.Array, speech_mask: jax.Array, segment_ids: jax.Array, num_segments: int,
                          max_frames: int | None = None):
    """Per-segment speech frames of packed rows, compacted to the left (module docstring).

    Args:
      x: [B, T, ...] per-position values (logits, hidden states, ids).
      speech_mask: [B, T] bool, True at positions that are CTC input frames.
      segment_ids: [B, T] int, 1.. per packed segment, 0 on padding.
      num_segments: S, static; segment id s+1 maps to slot s. Frames of segments with
        id > S are not gathered (see `frames_beyond_segments` in the stats).
      max_frames: F, static frame budget per segment (default T).

    Returns (frames [B, S, F, ...], paddings [B, S, F] float32 (1.0 = padded frame),
    counts [B, S] int32: the number of speech frames of each segment, which may exceed F).
    """
    b, t = speech_mask.shape
    s = int(num_segments)
    f = t if max_frames is None else int(max_frames)
    seg = segment_ids.astype(jnp.int32)
    valid = speech_mask.astype(bool) & (seg >= 1) & (seg <= s)
    key = jnp.where(valid, seg, s + 1)
    order = jnp.argsort(key, axis=1, stable=True)  # [B, T]
    onehot = valid[:, :, None] & (seg[:, :, None] == jnp.arange(1, s + 1, dtype=jnp.int32))
    counts = jnp.sum(onehot, axis=1, dtype=jnp.int32)  # [B, S]
    starts = jnp.cumsum(counts, axis=1) - counts  # exclusive cumsum
    j = jnp.arange(f, dtype=jnp.int32)
    pos = jnp.clip(starts[:, :, None] + j, 0, t - 1)  # [B, S, F] index into `order`
    idx = jnp.take_along_axis(order, pos.reshape(b, s * f), axis=1)  # [B, S*F] index into T
    paddings = (j[None, None, :] >= counts[:, :, None]).astype(jnp.float32)
    gather_idx = idx.reshape((b, s * f) + (1,) * (x.ndim - 2))
    frames = jnp.take_along_axis(x, gather_idx, axis=1).reshape((b, s, f) + x.shape[2:])
    return frames, paddings, counts


def ctc_min_frames(targets: jax.Array, target_lengths: jax.Array) -> jax.Array:
    """Fewest frames CTC needs for each label sequence: length + number of adjacent repeats."""
    l = targets.shape[-1]
    live = jnp.arange(l) < target_lengths[..., None]
    repeats = live[..., 1:] & (targets[..., 1:] == targets[..., :-1])
    return target_lengths.astype(jnp.int32) + jnp.sum(repeats, axis=-1, dtype=jnp.int32)


# --------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------


def ctc_loss_per_segment(logits: jax.Array, speech_mask: jax.Array, segment_ids: jax.Array, targets: jax.Array,
                         target_lengths: jax.Array, *, max_frames: int | None = None,
                         drop_infeasible: bool = True, return_stats: bool = False, blank_id: int = BLANK_ID):
    """Sum of CTC losses over the packed segments of a batch.

    Segment s of row b (segment id s+1) takes its speech positions (compacted, see the
    module docstring) as CTC input frames and is scored with `optax.ctc_loss` against
    `targets[b, s, :target_lengths[b, s]]`.

    Args:
      logits: [B, T, C] (cast to fp32), class `blank_id` = blank.
      speech_mask: [B, T] bool, the positions that are CTC frames.
      segment_ids: [B, T] int, 1.. per packed segment, 0 on padding (unpacked rows: 1).
      targets: [B, S, L] int32 char ids (right-padded; S = static max segments per row).
      target_lengths: [B, S] int32; 0 = no transcript.
      max_frames: static frame budget per segment (default T; see module docstring).
      drop_infeasible: skip segments with fewer frames than the labels need (length +
        adjacent repeats), whose loss would be ~1e5 (optax's log epsilon). Skipped
        segments are counted in the stats.
      return_stats: also return a dict of int32 counters.

    Returns (loss_sum, num_segments) as fp32 scalars, num_segments = the segments scored;
    segments with no target (length 0) or no speech contribute to neither. With
    `return_stats`, (loss_sum, num_segments, stats), stats = {"ctc_label_chars": chars of
    the scored segments, "ctc_frames": frames of the scored segments,
    "ctc_skipped_infeasible", "ctc_skipped_overlong" (more frames than max_frames),
    "ctc_frames_beyond_segments" (speech frames of segment ids > S, not scored)}.
    """
    b, t, c = logits.shape
    if targets.ndim != 3 or target_lengths.shape != targets.shape[:2] or targets.shape[0] != b:
        raise ValueError(f"ctc_loss_per_segment: expected targets [B, S, L] and target_lengths [B, S] with "
                         f"B={b}, got {targets.shape} and {target_lengths.shape}")
    if speech_mask.shape != (b, t) or segment_ids.shape != (b, t):
        raise ValueError(f"ctc_loss_per_segment: speech_mask {speech_mask.shape} and segment_ids "
                         f"{segment_ids.shape} must be [B, T] = {(b, t)}")
    _, s, l = targets.shape
    frames, paddings, counts = gather_segment_frames(logits.astype(jnp.float32), speech_mask, segment_ids, s,
                                                     max_frames)
    f = frames.shape[2]
    lengths = target_lengths.astype(jnp.int32)
    label_paddings = (jnp.arange(l)[None, None, :] >= lengths[:, :, None]).astype(jnp.float32)
    labels = jnp.where(label_paddings > 0, 0, targets).astype(jnp.int32)
    per_seg = optax.ctc_loss(frames.reshape(b * s, f, c), paddings.reshape(b * s, f), labels.reshape(b * s, l),
                             label_paddings.reshape(b * s, l), blank_id=blank_id).reshape(b, s)

    has_target = (lengths > 0) & (counts > 0)
    overlong = has_target & (counts > f)
    infeasible = has_target & ~overlong & (counts < ctc_min_frames(labels, lengths))
    scored = has_target & ~overlong
    if drop_infeasible:
        scored = scored & ~infeasible
    loss_sum = jnp.sum(jnp.where(scored, per_seg, 0.0))
    num = jnp.sum(scored).astype(jnp.float32)
    if not return_stats:
        return loss_sum, num
    seg = segment_ids.astype(jnp.int32)
    stats = {
        "ctc_label_chars": jnp.sum(jnp.where(scored, lengths, 0)),
        "ctc_frames": jnp.sum(jnp.where(scored, counts, 0)),
        "ctc_skipped_infeasible": jnp.sum(infeasible & drop_infeasible).astype(jnp.int32),
        "ctc_skipped_overlong": jnp.sum(overlong).astype(jnp.int32),
        "ctc_frames_beyond_segments": jnp.sum(speech_mask.astype(bool) & (seg > s)).astype(jnp.int32),
    }
    return loss_sum, num, stats


def ctc_loss_rows(logits: jax.Array, frame_mask: jax.Array, targets: jax.Array, target_lengths: jax.Array,
                  **kwargs):
    """One utterance per row: `ctc_loss_per_segment` with every row a single segment.

    logits [B, T, C]; frame_mask [B, T] bool (True = CTC frame, compacted like a segment's
    speech positions); targets [B, L]; target_lengths [B]. Returns (loss_sum, num_rows)
    (+ stats with `return_stats=True`).
    """
    frame_mask = frame_mask.astype(bool)
    return ctc_loss_per_segment(logits, frame_mask, frame_mask.astype(jnp.int32), targets[:, None, :],
                                target_lengths[:, None], **kwargs)


def speech_frame_mask(modality: jax.Array, segment_ids: jax.Array | None = None, which: str = "inputs"):
    """Which positions are speech frames, from `decoder_modality` (the TARGET token's modality).

    which="inputs" (default): positions whose INPUT token is speech, i.e. `decoder_modality`
      shifted right by one within each segment. The causal hidden state at such a position
      has just read a speech unit, which is what an encoder output for that unit is.
    which="targets": positions whose target token is speech (`decoder_modality == 2`).
    """
    is_speech = modality == MODALITY_SPEECH
    if which == "targets":
        return is_speech
    if which != "inputs":
        raise ValueError(f"speech_frame_mask: which={which!r}, expected 'inputs' or 'targets'")
    shifted = jnp.pad(is_speech[:, :-1], ((0, 0), (1, 0)))
    if segment_ids is not None:
        same = jnp.pad(segment_ids[:, 1:] == segment_ids[:, :-1], ((0, 0), (1, 0)))
        shifted = shifted & same
    return shifted


def ctc_loss_from_batch(logits: jax.Array, batch: Mapping[str, jax.Array], *, which: str = "inputs", **kwargs):
    """`ctc_loss_per_segment` on a feature-converter batch.

    Needs `decoder_modality`, `ctc_targets` [B, S, L], `ctc_target_lengths` [B, S] and
    (packed) `decoder_segment_ids`; unpacked batches without segment ids are treated as
    one segment per row (segment id 1 on non-padding positions). `logits` are the
    CTCHead's outputs on the decoder's hidden states. Returns (loss_sum, num_segments)
    (+ stats with `return_stats=True`); the caller normalises, e.g. loss_sum / max(num, 1).
    """
    modality = batch[contract.DECODER_MODALITY]
    seg = batch.get(contract.DECODER_SEGMENT_IDS)
    if seg is None:
        seg = (batch[contract.DECODER_TARGET_TOKENS] != 0).astype(jnp.int32)
    mask = speech_frame_mask(modality, seg, which)
    return ctc_loss_per_segment(logits, mask, seg, batch["ctc_targets"], batch["ctc_target_lengths"], **kwargs)


# --------------------------------------------------------------------------------------
# Targets from seqio-packed features
# --------------------------------------------------------------------------------------


def ctc_targets_from_packed(packed: jax.Array, packed_segment_ids: jax.Array, packed_positions: jax.Array,
                            num_segments: int, max_length: int | None = None, leading_sentinel: bool = False):
    """seqio-packed 1-D `ctc_targets` rows [B, Lp] -> (targets [B, S, L], lengths [B, S]).

    `seqio.utils.trim_and_pack_dataset` packs every feature separately and numbers a
    feature's segments by the examples that HAVE tokens in it, so an example with an empty
    `ctc_targets` shifts the numbering of the later ones against `decoder_segment_ids`.
    Write the targets with `add_ctc_targets(..., packing_sentinel=True)` (every example,
    including text-only ones via `add_empty_ctc_targets`, then holds >= 1 token) and pass
    `leading_sentinel=True` here: the sentinel (position 0 of each segment) is removed.
    Note also that the packer TRIMS a feature longer than its packed length; bound the
    transcript length with `max_chars` upstream.

    L defaults to Lp (a segment can never be longer than the packed row).
    """
    b, lp = packed.shape
    s = int(num_segments)
    l = lp if max_length is None else int(max_length)
    seg = packed_segment_ids.astype(jnp.int32)
    pos = packed_positions.astype(jnp.int32)
    if leading_sentinel:
        live = (seg >= 1) & (pos >= 1)
        pos = pos - 1
    else:
        live = seg >= 1
    live = live & (seg <= s) & (pos < l)
    rows = jnp.broadcast_to(jnp.arange(b)[:, None], (b, lp))
    slot = jnp.where(live, seg - 1, s)  # out-of-range slot -> dropped by mode="drop"
    targets = jnp.zeros((b, s, l), jnp.int32).at[rows, slot, jnp.clip(pos, 0, l - 1)].set(
        packed.astype(jnp.int32), mode="drop")
    lengths = jnp.zeros((b, s), jnp.int32).at[rows, slot].add(live.astype(jnp.int32), mode="drop")
    return targets, lengths


# --------------------------------------------------------------------------------------
# Decoding (inspection)
# --------------------------------------------------------------------------------------


def ctc_greedy_decode(logits: jax.Array, paddings: jax.Array, blank_id: int = BLANK_ID):
    """Best-path decoding: argmax per frame, drop padded frames, collapse repeats, drop blanks.

    logits [B, T, C]; paddings [B, T] (1/True = padded frame; padded frames are removed
    before collapsing). Returns (ids [B, T] int32, left-aligned, 0 after the end;
    lengths [B] int32). `CharVocabulary.decode(ids[b, :lengths[b]])` gives the text.
    """
    best = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    keep = ~paddings.astype(bool)
    order = jnp.argsort(~keep, axis=1, stable=True)
    best = jnp.take_along_axis(best, order, axis=1)
    keep = jnp.take_along_axis(keep, order, axis=1)
    prev = jnp.pad(best[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
    emit = keep & (best != prev) & (best != blank_id)
    order = jnp.argsort(~emit, axis=1, stable=True)
    ids = jnp.where(jnp.take_along_axis(emit, order, axis=1), jnp.take_along_axis(best, order, axis=1), 0)
    return ids, jnp.sum(emit, axis=1, dtype=jnp.int32)


def ctc_greedy_decode_segments(logits: jax.Array, speech_mask: jax.Array, segment_ids: jax.Array,
                               num_segments: int, blank_id: int = BLANK_ID):
    """`ctc_greedy_decode` per packed segment: (ids [B, S, T], lengths [B, S])."""
    frames, paddings, _ = gather_segment_frames(logits, speech_mask, segment_ids, num_segments)
    b, s, f, c = frames.shape
    ids, lengths = ctc_greedy_decode(frames.reshape(b * s, f, c), paddings.reshape(b * s, f), blank_id)
    return ids.reshape(b, s, f), lengths.reshape(b, s)
