"""`SLMFeatureConverter`: seqio's decoder-only conversion plus modality, loss mask and patch ids.

Task features (all int32, 1-D, the same length as `targets`):

    targets     required; ends with EOS (see `slm_jax.data.preprocessors.interleave`)
    modality    optional; per-token modality id (0 pad, 1 text, 2 speech, 3 marker).
                Missing -> derived with `vocabulary.modality_ids_tf(targets)` when the
                converter was given a vocabulary, else zeros ("unknown").
    loss_mask   optional; 1 where the token is a prediction target (0 for prompts).
                Missing -> ones (every token is a target, as in seqio).
    patch_ids   optional; index of the latent patch (LST) a token belongs to, >= 0.
                Missing -> -1 ("no patch").
    task_ids    optional; 1-based index of the mixture member the token came from
                (`slm_jax.data.pipeline` tags each member). Missing -> no
                `decoder_task_ids` output (the pipeline then writes 1 on every token).

Model features (int32 [length]); position i of every feature describes TARGET token i:

    decoder_target_tokens   targets, trimmed/padded (packed: concatenated)
    decoder_input_tokens    targets shifted right, the run's BOS id (`run_bos_id()`, 0 by
                            default) at each segment start
    decoder_loss_weights    nonpad(targets) * loss_mask
    decoder_segment_ids     1, 2, ... per packed example, 0 on padding   (pack=True only)
    decoder_positions       0.. within each packed example, 0 on padding (pack=True only)
    decoder_modality        modality of the target token, 0 on padding
    decoder_patch_ids       patch id of the target token, -1 on padding
    decoder_task_ids        task id of the target token, 0 on padding (only when the task
                            has `task_ids`; token accounting, never fed to a model)

The first five are exactly `seqio.DecoderFeatureConverter`'s (unpacked: three, like
seqio; `slm_jax.data.pipeline` adds segment ids and positions to unpacked rows). A model
that wants the modality/patch of the INPUT token shifts these right within segments
(`seqio.utils.make_autoregressive_inputs(x, sequence_id=decoder_segment_ids)`).

CTC targets (mSLAM's auxiliary CTC, `slm_jax.data.preprocessors.ctc_targets` / `slm_jax.models.ctc`).
A task may add one more feature that is NOT aligned with `targets`:

    ctc_targets  optional; int32 character ids (all > 0) of the example's transcript,
                 any length; usually `add_ctc_targets(..., packing_sentinel=True)`, i.e.
                 a leading sentinel id then the characters.

When the task's dataset has it, `task_feature_lengths["ctc_targets"]` (required then,
and only then) is the length of the ctc stream, packed on its own next to `targets`:
the packer closes a row when EITHER stream is full, so example k of a row is segment k
of both streams. Three model features are added, int32 [length_ctc]:

    decoder_ctc_targets      ctc_targets of the row's examples, concatenated, 0-padded
    decoder_ctc_segment_ids  1, 2, ... per example (the same numbering as
                             decoder_segment_ids), 0 on padding; unpacked: 1 on tokens
    decoder_ctc_positions    0.. within each example, 0 on padding

`slm_jax.models.ctc.ctc_targets_from_packed(decoder_ctc_targets, decoder_ctc_segment_ids,
decoder_ctc_positions, S, leading_sentinel=True)` turns them into [B, S, L] targets whose
row s-1 belongs to segment s of `decoder_segment_ids`. Nothing is trimmed: an example
whose ctc_targets is longer than the ctc length fails the pipeline naming the example
(its `id` and its index in the converter's input), before seqio's packer (which would
trim silently). Values must be > 0 (the packer measures a feature by its non-zero
values), and while packing every example needs >= 1 ctc token (an empty one would shift
the ctc segment numbering against `decoder_segment_ids`; that is what the sentinel is
for). The sentinels are kept in `decoder_ctc_targets`.

Why values are offset while packing: seqio's TF packer (`utils.trim_and_pack_dataset`)
measures each feature's length as its count of NON-ZERO values, so a 0 inside
`loss_mask`, `modality` or `patch_ids` would truncate that feature and misalign it. The
optional features are therefore packed as value + offset (all > 0) and mapped back
after packing, with padding restored to the documented pad values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import gin
import numpy as np
import seqio
import tensorflow as tf

from slm_jax import contract as c
from slm_jax.data import packing
from slm_jax.data.preprocessors.common import as_ragged

FeatureSpec = seqio.FeatureConverter.FeatureSpec

# feature -> (value when a task lacks it, offset while packing, value on padding). `task_ids`
# (values >= 1, no offset needed) yields its model feature only when the task has it.
OPTIONAL_FEATURES = {
    "modality": (0, 1, 0),
    "loss_mask": (1, 1, 0),
    "patch_ids": (-1, 2, -1),
    c.TASK_IDS: (1, 0, 0),
}


CTC_KEY = c.CTC_TARGETS
# Model features of the ctc stream, each [task_feature_lengths["ctc_targets"]] int32.
CTC_MODEL_FEATURES = c.CTC_MODEL_FEATURES


# The input before the first token of every segment for runs from scratch: seqio's decoder-only
# convention (id 0, the PAD id of slm_jax's vocabularies).
DEFAULT_BOS_ID = 0


@gin.configurable
def run_bos_id(bos_id: int = DEFAULT_BOS_ID) -> int:
    """The run's BOS id: the input before the first token of every sequence, int >= 0.

    One gin binding (`run_bos_id.bos_id = N`) sets it for the whole run: the feature
    converter's `decoder_input_tokens`, the likelihood scorer, alignment and generation
    read it when not given one. Runs from scratch keep `DEFAULT_BOS_ID` (0, seqio's). A
    model imported with `slm-jax import-hf` must be run behind its own first token (Llama:
    `<s>` = 1, Qwen2: `<|endoftext|>`; rule in `slm_jax.interop.hf_import.resolve_bos`):
    import-hf writes the binding into MODEL_DIR/model.gin and records it in MODEL_DIR/bos.json
    (`slm_jax.training.run_dir.check_bos` refuses a run configured with another one).
    Raises ValueError for a value that is not an int >= 0.
    """
    return checked_bos_id(bos_id, "run_bos_id.bos_id")


def checked_bos_id(bos_id, where: str) -> int:
    """`bos_id` as an int; ValueError naming `where` unless it is an int >= 0."""
    if isinstance(bos_id, bool) or not isinstance(bos_id, (int, np.integer)) or bos_id < 0:
        raise ValueError(f"{where}={bos_id!r} must be an int >= 0 (a token id)")
    return int(bos_id)


def resolve_bos_id(bos_id, where: str) -> int:
    """An explicit `bos_id` (checked), or the run's (`run_bos_id()`) when None."""
    return run_bos_id() if bos_id is None else checked_bos_id(bos_id, where)


def _packed_optional_keys(element_spec, vocabulary) -> tuple[str, ...]:
    """Optional features worth packing: present in the task, and not derivable after packing.

    Packing cost grows with every packed feature, so a missing feature is synthesised
    after packing instead of being filled with defaults first, and `modality` (a pure
    function of the token id) is recomputed from the packed targets when the vocabulary
    is known.
    """
    keys = [k for k in OPTIONAL_FEATURES if k in element_spec and k != "loss_mask"]
    if vocabulary is not None and hasattr(vocabulary, "modality_ids_tf"):
        keys = [k for k in keys if k != "modality"]
    return tuple(keys)


def _unoffset(value: tf.Tensor, key: str) -> tf.Tensor:
    """Inverse of the offset `_encoded_group` adds, on a padded/packed row; padding (0) becomes the pad value."""
    _, offset, pad = OPTIONAL_FEATURES[key]
    return tf.where(tf.equal(value, 0), pad, value - offset)


def _example_name(ex: Mapping[str, tf.Tensor], index: tf.Tensor) -> tf.Tensor:
    """'#<index> (id <id>)': the example's index in the converter's input and its `id`."""
    rid = ex.get("id")
    if rid is None:
        rid = tf.constant("<no id>")
    elif rid.dtype != tf.string:
        rid = tf.strings.as_string(rid)
    rid = tf.strings.reduce_join(tf.reshape(rid, [-1]), separator=",")
    return tf.strings.join(["#", tf.strings.as_string(index), " (id ", rid, ")"])


_CTC_TOO_LONG = ("(no truncation is done; raise the ctc length, e.g. DatasetConfig.ctc_length, or bound the "
                 "transcripts with add_ctc_targets(max_chars=...)); ctc_targets:")
_CTC_NOT_POSITIVE = "has ctc_targets values <= 0 (ids must be > 0: 0 is padding); ctc_targets:"
_CTC_EMPTY = ("has an empty ctc_targets: packing it would shift the ctc segments against decoder_segment_ids; write "
              "the targets with add_ctc_targets(..., packing_sentinel=True) / add_empty_ctc_targets(..., "
              "packing_sentinel=True)")


def _autoregressive_inputs(targets: tf.Tensor, segment_ids: tf.Tensor | None, bos_id: int) -> tf.Tensor:
    """`seqio.utils.make_autoregressive_inputs` on the last axis of rows of any rank: targets
    shifted right, `bos_id` at every segment start."""
    shifted = tf.concat([tf.fill(tf.shape(targets[..., :1]), tf.constant(bos_id, targets.dtype)), targets[..., :-1]], -1)
    if segment_ids is None:
        return shifted
    previous = tf.concat([tf.zeros_like(segment_ids[..., :1]), segment_ids[..., :-1]], -1)
    return tf.where(tf.equal(segment_ids, previous), shifted, tf.constant(bos_id, targets.dtype))


def _check_aligned(key: str, value: tf.RaggedTensor, targets: tf.RaggedTensor) -> tf.Operation:
    """Asserts an optional feature [G, (n)] is aligned with `targets` [G, (n)] (both trimmed to
    the length) and packable (value + offset > 0); the message shows the first bad example."""
    offset = OPTIONAL_FEATURES[key][1]
    bad = tf.logical_or(tf.not_equal(value.row_lengths(), targets.row_lengths()),
                        tf.reduce_any(value + offset <= 0, axis=1))
    first = tf.argmax(tf.cast(bad, tf.int32), output_type=tf.int64)
    return tf.debugging.Assert(
        tf.logical_not(tf.reduce_any(bad)),
        [f"SLMFeatureConverter: feature {key!r} must have the length of 'targets' and values > {-offset};",
         "lengths:", value.row_lengths()[first], targets.row_lengths()[first], "values:", value[first]],
        summarize=16,
    )


def _checked_ctc(batch: Mapping[str, tf.Tensor], first_index: tf.Tensor, ctc_length: int,
                 pack: bool) -> tf.RaggedTensor:
    """`batch["ctc_targets"]` [G, (n)] as int32, asserted storable without loss (module docstring:
    at most `ctc_length` ids, all > 0, and when packing at least one); each rule names its first
    offending example (`first_index`: the group's first index in the converter's input)."""
    ctc = tf.cast(batch[CTC_KEY], tf.int32)
    sizes = ctc.row_lengths()
    who = "SLMFeatureConverter: example"

    def fails_on(bad, *message):
        first = tf.argmax(tf.cast(bad, tf.int32), output_type=tf.int64)
        name = _example_name({"id": batch["id"][first]} if "id" in batch else {}, first_index + first)
        message = [m(first) if callable(m) else m for m in message]
        return tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)), [who, name, *message], summarize=32)

    checks = [
        fails_on(sizes > ctc_length, "has", lambda i: sizes[i],
                 f"ctc_targets, more than task_feature_lengths['{CTC_KEY}'] =", ctc_length, _CTC_TOO_LONG,
                 lambda i: ctc[i]),
        fails_on(tf.reduce_any(ctc <= 0, axis=1), _CTC_NOT_POSITIVE, lambda i: ctc[i]),
    ]
    if pack:
        checks.append(fails_on(tf.equal(sizes, 0), _CTC_EMPTY))
    with tf.control_dependencies(checks):
        return tf.identity(ctc)


def _encoded_group(batch: Mapping[str, tf.Tensor], length: int, keys: tuple[str, ...], ctc_length: int | None,
                   first_index: tf.Tensor, pack: bool) -> dict:
    """The converter's checks and encodings of a group of examples (features [G, (n)], ragged or
    dense; one example is a group of one), written once for packing and padding.

    Returns ragged int32 features: `targets` trimmed to `length` and negated where `loss_mask`
    is 0 (the mask travels in the sign of the ids, free to pack: the packer only needs ids
    non-zero; `_convert_example` reads it back), the optional `keys` trimmed + their offset
    (`OPTIONAL_FEATURES`), and `ctc_targets` checked (`_checked_ctc`). Raises (when run)
    InvalidArgumentError naming the rule and the first offending example.
    """
    batch = {k: as_ragged(v) for k, v in batch.items()}
    task = {"targets": tf.cast(batch["targets"][:, :length], tf.int32)}
    checks = packing.check_nonzero(task, ("targets",)) if pack else []
    for key in (*keys, *(("loss_mask",) if "loss_mask" in batch else ())):
        value = tf.cast(batch[key][:, :length], tf.int32)
        checks.append(_check_aligned(key, value, task["targets"]))
        task[key] = value
    if ctc_length:
        task[CTC_KEY] = _checked_ctc(batch, first_index, ctc_length, pack)
    with tf.control_dependencies(checks):
        mask = task.pop("loss_mask", None)
        if mask is not None:
            task["targets"] = task["targets"].with_flat_values(
                tf.where(mask.flat_values > 0, task["targets"].flat_values, -task["targets"].flat_values))
        for key in keys:
            task[key] = task[key] + OPTIONAL_FEATURES[key][1]
        return {k: v.with_flat_values(tf.identity(v.flat_values)) for k, v in task.items()}


class SLMFeatureConverter(seqio.FeatureConverter):
    """Decoder-only feature converter for slm_jax tasks (see the module docstring).

    Args:
      pack: pack several examples per row (seqio's TF packer) or pad each to length.
      vocabulary: optional `SpeechTextVocabulary`; derives `modality` when a task lacks it.
      use_custom_packing_ops, apply_length_check: as in `seqio.FeatureConverter`.
      bos_id: the id before each segment's first token (as in seqio); None (default): the
        run's, `run_bos_id()` (0 unless gin binds `run_bos_id.bos_id`).
    """

    TASK_FEATURES: ClassVar[dict] = {
        "targets": FeatureSpec(dtype=tf.int32),
        "modality": FeatureSpec(dtype=tf.int32),
        "loss_mask": FeatureSpec(dtype=tf.int32),
        "patch_ids": FeatureSpec(dtype=tf.int32),
        c.TASK_IDS: FeatureSpec(dtype=tf.int32),
        CTC_KEY: FeatureSpec(dtype=tf.int32),
    }
    MODEL_FEATURES: ClassVar[dict] = {
        "decoder_target_tokens": FeatureSpec(dtype=tf.int32),
        "decoder_input_tokens": FeatureSpec(dtype=tf.int32),
        "decoder_loss_weights": FeatureSpec(dtype=tf.int32),
        c.DECODER_MODALITY: FeatureSpec(dtype=tf.int32),
        c.DECODER_PATCH_IDS: FeatureSpec(dtype=tf.int32),
    }
    PACKING_FEATURE_DTYPES: ClassVar[dict] = {
        "decoder_segment_ids": tf.int32,
        "decoder_positions": tf.int32,
    }

    def __init__(
        self,
        pack: bool = True,
        vocabulary=None,
        use_custom_packing_ops: bool = False,
        apply_length_check: bool = True,
        bos_id: int | None = None,
    ):
        self._vocabulary = vocabulary
        bos_id = resolve_bos_id(bos_id, "SLMFeatureConverter(bos_id)")
        super().__init__(
            pack=pack,
            use_custom_packing_ops=use_custom_packing_ops,
            apply_length_check=apply_length_check,
            bos_id=bos_id,
        )

    def __call__(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
        """Fills the optional task features, then runs seqio's validated conversion.

        `task_feature_lengths` needs `targets`; the optional aligned features may be listed
        too, with the same length (they always share the targets' length). `ctc_targets`
        has its own length, required exactly when the dataset has a `ctc_targets` feature.
        """
        if "targets" not in task_feature_lengths:
            raise ValueError(
                f"SLMFeatureConverter: task_feature_lengths needs 'targets', got {dict(task_feature_lengths)}"
            )
        length = task_feature_lengths["targets"]
        for key, value in task_feature_lengths.items():
            if key not in type(self).TASK_FEATURES:
                raise ValueError(
                    f"SLMFeatureConverter: unknown task feature {key!r} in task_feature_lengths; "
                    f"expected a subset of {sorted(type(self).TASK_FEATURES)}"
                )
            if key != CTC_KEY and value != length:
                raise ValueError(
                    f"SLMFeatureConverter: task_feature_lengths[{key!r}]={value} differs from "
                    f"targets' {length}; every task feature is aligned with targets"
                )
        has_ctc = CTC_KEY in ds.element_spec
        ctc_length = task_feature_lengths.get(CTC_KEY)
        if has_ctc and ctc_length is None:
            raise ValueError(
                f"SLMFeatureConverter: the task's dataset has a {CTC_KEY!r} feature but "
                f"task_feature_lengths has no {CTC_KEY!r} (the length of the packed ctc stream, "
                f"e.g. DatasetConfig.ctc_length); got {dict(task_feature_lengths)}"
            )
        if ctc_length is not None and not has_ctc:
            raise ValueError(
                f"SLMFeatureConverter: task_feature_lengths[{CTC_KEY!r}]={ctc_length} but the task's "
                f"dataset has no {CTC_KEY!r} feature (features: {sorted(ds.element_spec)})"
            )
        if has_ctc and (isinstance(ctc_length, bool) or not isinstance(ctc_length, int) or ctc_length <= 0):
            raise ValueError(
                f"SLMFeatureConverter: task_feature_lengths[{CTC_KEY!r}] must be a positive int, "
                f"got {ctc_length!r}"
            )
        keys = _packed_optional_keys(ds.element_spec, self._vocabulary)
        if self.pack:
            return self._pack_vectorised(ds, length, keys, ctc_length if has_ctc else None)

        def prepare(index, ex):
            # one example = a group of one; `targets` past the length are kept for seqio's length check
            one = {k: tf.expand_dims(v, 0) for k, v in ex.items()
                   if k in ("id", "targets", "loss_mask", *keys, *((CTC_KEY,) if has_ctc else ()))}
            group = _encoded_group(one, length, keys, ctc_length if has_ctc else None, index, pack=False)
            out = {k: v.flat_values for k, v in group.items()}
            out["targets"] = tf.concat([out["targets"], tf.cast(ex["targets"][length:], tf.int32)], 0)
            return out

        # The example index (for error messages) comes from `enumerate`.
        ds = ds.enumerate().map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
        # seqio validates task_feature_lengths against TASK_FEATURES exactly: narrow it to
        # the features this dataset packs (and the model features to those it produces).
        packed = ("targets", *keys, *((CTC_KEY,) if has_ctc else ()))
        self.TASK_FEATURES = {k: type(self).TASK_FEATURES[k] for k in packed}
        self.MODEL_FEATURES = dict(type(self).MODEL_FEATURES)
        if c.TASK_IDS in keys:
            self.MODEL_FEATURES[c.DECODER_TASK_IDS] = FeatureSpec(dtype=tf.int32)
        if has_ctc:
            self.MODEL_FEATURES.update({k: FeatureSpec(dtype=tf.int32) for k in CTC_MODEL_FEATURES})
        lengths = {key: length for key in self.TASK_FEATURES}
        if has_ctc:
            lengths[CTC_KEY] = ctc_length
        return super().__call__(ds, lengths)

    def _pack_vectorised(self, ds: tf.data.Dataset, length: int, keys: tuple[str, ...],
                         ctc_length: int | None) -> tf.data.Dataset:
        """Packed rows equal to seqio's packer + `_convert_example`, computed per group of
        examples (`slm_jax.data.packing`): every check, the loss-mask fold and the offsets
        run on ragged batches, so the only per-example work left is batching.

        Why not seqio's packer: it appends examples one by one in a `tf.while_loop`, which
        cost more than all of a task's preprocessing (bench/data_pipeline.py).
        """
        spec = ds.element_spec
        for key in ("targets", *keys, *(("loss_mask",) if "loss_mask" in spec else ()),
                    *((CTC_KEY,) if ctc_length else ())):
            if key not in spec or spec[key].shape.rank != 1 or not spec[key].dtype.is_integer:
                got = spec[key] if key in spec else "missing"
                raise ValueError(f"SLMFeatureConverter: task feature {key!r} must be a 1-D integer feature; got {got}")
        lengths = {"targets": length, **{k: length for k in keys}, **({CTC_KEY: ctc_length} if ctc_length else {})}
        max_group = packing.group_size(lengths)

        def pack(first_index, batch):
            task = _encoded_group(batch, length, keys, ctc_length, first_index, pack=True)
            return self._convert_example(packing.pack_group(task, lengths, max_group))

        def set_shape(row):
            for key, value in row.items():
                value.set_shape([ctc_length if key in CTC_MODEL_FEATURES else length])
            return row

        # The example index (for error messages) comes from `enumerate`, before batching.
        groups = ds.enumerate().ragged_batch(max_group)
        groups = groups.map(lambda index, batch: pack(index[0], batch), num_parallel_calls=tf.data.AUTOTUNE)
        return groups.unbatch().map(set_shape)

    def _convert_example(self, features: Mapping[str, tf.Tensor]) -> dict:
        """One padded/packed row of offset task features -> model features."""
        signed = features["targets"]
        targets = tf.abs(signed)
        segment_ids = features.get("targets_segment_ids")
        weights = tf.cast(signed > 0, tf.int32)  # pad (0) and loss-masked (-id) tokens weigh 0
        features = {**features, "targets": targets}
        out = {
            "decoder_target_tokens": targets,
            "decoder_input_tokens": _autoregressive_inputs(targets, segment_ids, self.bos_id),
            "decoder_loss_weights": weights,
            c.DECODER_MODALITY: self._modality(features),
            c.DECODER_PATCH_IDS: (_unoffset(features["patch_ids"], "patch_ids") if "patch_ids" in features
                                  else tf.fill(tf.shape(targets), tf.constant(OPTIONAL_FEATURES["patch_ids"][2]))),
        }
        if c.TASK_IDS in features:
            out[c.DECODER_TASK_IDS] = _unoffset(features[c.TASK_IDS], c.TASK_IDS)
        if self.pack:
            out["decoder_segment_ids"] = segment_ids
            out["decoder_positions"] = features["targets_positions"]
        if CTC_KEY in features:
            ctc = features[CTC_KEY]
            if self.pack:
                ctc_segments, ctc_positions = features[CTC_KEY + "_segment_ids"], features[CTC_KEY + "_positions"]
            else:  # one example per row: segment 1 on its (non-zero) ids, positions 0..n-1
                ctc_segments = tf.cast(tf.not_equal(ctc, 0), tf.int32)
                ctc_positions = tf.range(tf.size(ctc), dtype=tf.int32) * ctc_segments
            out[c.DECODER_CTC_TARGETS] = ctc
            out[c.DECODER_CTC_SEGMENT_IDS] = ctc_segments
            out[c.DECODER_CTC_POSITIONS] = ctc_positions
        return out

    def _modality(self, features: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """Packed modality ids: unpacked, or recomputed from the packed tokens (pad -> 0)."""
        targets = features["targets"]
        if "modality" in features:
            return _unoffset(features["modality"], "modality")
        if self._vocabulary is not None and hasattr(self._vocabulary, "modality_ids_tf"):
            modality = tf.cast(self._vocabulary.modality_ids_tf(targets), tf.int32)
            return tf.where(tf.equal(targets, 0), 0, modality)
        return tf.zeros_like(targets)

    def _convert_features(
        self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
    ) -> tf.data.Dataset:
        ds = self._pack_or_pad(ds, task_feature_lengths)  # `prepare` (in __call__) encoded and offset the features
        return ds.map(self._convert_example, num_parallel_calls=tf.data.AUTOTUNE)

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
        length = task_feature_lengths["targets"]
        keys = list(self.MODEL_FEATURES) + (list(self.PACKING_FEATURE_DTYPES) if self.pack else [])
        lengths = {key: length for key in keys}
        if CTC_KEY in task_feature_lengths:
            lengths.update({key: task_feature_lengths[CTC_KEY] for key in CTC_MODEL_FEATURES})
        return lengths
