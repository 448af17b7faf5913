"""A unit-only token space as a `seqio.Vocabulary`.

Layout (fixed, so checkpoints and corpora stay comparable):

    0 = PAD, 1 = EOS, 2 = UNK, unit u -> 3 + u   for u in [0, num_units)
    then `extra_ids` ids after the units (seqio convention).

String form (the `str` API: `encode`/`decode`, `encode_tf`/`decode_tf`): units
are written as whitespace-separated decimal integers, e.g. ``"3 7 7 12"``. PAD
and EOS are not rendered by `decode`; UNK and ids outside the base vocabulary
render as ``<unk>``. `encode` also accepts a sequence of ints (the units
themselves). The main entry point for pipelines is `unit_ids_to_tokens`, which
maps unit ints to token ids for numpy inputs and for `tf.Tensor`s (graph-safe,
so it can run inside a checkpointable tf.data pipeline).

A later, SpiritLM-compatible token space (text + markers + HuBERT/pitch/style)
will live beside this one; this class only covers speech units.
"""

from __future__ import annotations

from typing import Iterable, Sequence, Union

import numpy as np
import seqio
import tensorflow as tf

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
NUM_SPECIAL = 3  # PAD, EOS, UNK come before the first unit.
UNK_STR = "<unk>"


class UnitVocabulary(seqio.Vocabulary):
    """Token space of `num_units` discrete speech units (id = 3 + unit)."""

    def __init__(self, num_units: int, extra_ids: int = 0):
        if not isinstance(num_units, (int, np.integer)) or num_units <= 0:
            raise ValueError(f"UnitVocabulary: num_units must be a positive int, got {num_units!r}")
        self._num_units = int(num_units)
        super().__init__(extra_ids=extra_ids)

    # --- seqio.Vocabulary properties -------------------------------------------
    @property
    def num_units(self) -> int:
        return self._num_units

    @property
    def bos_id(self) -> int | None:
        return None  # Decoder-only: seqio shifts targets with 0 (PAD) as BOS.

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def unk_id(self) -> int:
        return UNK_ID

    @property
    def _base_vocab_size(self) -> int:
        return NUM_SPECIAL + self._num_units

    # --- unit <-> id mapping ----------------------------------------------------
    def unit_ids_to_tokens(self, units):
        """Maps unit ints to token ids (3 + u); rejects units outside [0, num_units).

        Accepts a `tf.Tensor` (returns int32 tensor; the range check is a
        `tf.debugging.Assert` so it fails inside tf.data graphs too, printing the
        offending values) or anything numpy can convert (returns an int32 array;
        raises ValueError naming the offending value).
        """
        if isinstance(units, (tf.Tensor, tf.Variable)):
            return self._unit_ids_to_tokens_tf(units)
        arr = np.asarray(units)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"UnitVocabulary: units must be integers, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
        bad = arr[(arr < 0) | (arr >= self._num_units)]
        if bad.size:
            raise ValueError(
                f"UnitVocabulary: unit {int(bad.flat[0])} is out of range [0, {self._num_units})"
                f" ({bad.size} out-of-range value(s); first few: {bad.ravel()[:8].tolist()})"
            )
        return (arr + NUM_SPECIAL).astype(np.int32)

    def _unit_ids_to_tokens_tf(self, units: tf.Tensor) -> tf.Tensor:
        units = tf.convert_to_tensor(units)
        if not units.dtype.is_integer:
            raise ValueError(f"UnitVocabulary: units must be an integer tensor, got {units.dtype}")
        units = tf.cast(units, tf.int64)
        in_range = tf.logical_and(units >= 0, units < self._num_units)
        check = tf.debugging.Assert(
            tf.reduce_all(in_range),
            [
                f"UnitVocabulary: unit out of range [0, {self._num_units}); offending values:",
                tf.boolean_mask(units, tf.logical_not(in_range)),
            ],
            summarize=16,
        )
        with tf.control_dependencies([check]):
            return tf.cast(units + NUM_SPECIAL, tf.int32)

    def tokens_to_unit_ids(self, ids):
        """Inverse of `unit_ids_to_tokens` for numpy input; non-unit ids raise ValueError."""
        arr = np.asarray(ids, dtype=np.int64)
        bad = arr[(arr < NUM_SPECIAL) | (arr >= self._base_vocab_size)]
        if bad.size:
            raise ValueError(
                f"UnitVocabulary: token id {int(bad.flat[0])} is not a unit id "
                f"(unit ids are [{NUM_SPECIAL}, {self._base_vocab_size}))"
            )
        return (arr - NUM_SPECIAL).astype(np.int32)

    # --- seqio string API -------------------------------------------------------
    def _encode(self, s: Union[str, Sequence[int]]) -> Sequence[int]:
        if isinstance(s, bytes):
            s = s.decode("utf-8")
        if isinstance(s, str):
            try:
                units = [int(tok) for tok in s.split()]
            except ValueError as e:
                raise ValueError(
                    f"UnitVocabulary.encode: expected whitespace-separated unit ints, got {s[:80]!r}"
                ) from e
        else:
            units = list(s)
        if not units:
            return []
        return self.unit_ids_to_tokens(units).tolist()

    def _decode(self, ids: Iterable[int]) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i in (PAD_ID, EOS_ID):
                continue
            if NUM_SPECIAL <= i < self._base_vocab_size:
                out.append(str(i - NUM_SPECIAL))
            else:
                out.append(UNK_STR)
        return " ".join(out)

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        """Scalar string "3 7 12" -> int32 ids; an integer tensor is taken as units."""
        s = tf.convert_to_tensor(s)
        if s.dtype == tf.string:
            units = tf.strings.to_number(tf.strings.split(s), out_type=tf.int64)
        else:
            units = s
        return self._unit_ids_to_tokens_tf(units)

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        """int ids [..., n] -> string [...] (PAD/EOS dropped, non-units as <unk>)."""
        ids = tf.cast(tf.convert_to_tensor(ids), tf.int64)
        is_unit = tf.logical_and(ids >= NUM_SPECIAL, ids < self._base_vocab_size)
        words = tf.where(is_unit, tf.strings.as_string(ids - NUM_SPECIAL), UNK_STR)
        keep = tf.logical_and(tf.not_equal(ids, PAD_ID), tf.not_equal(ids, EOS_ID))
        return tf.strings.reduce_join(tf.ragged.boolean_mask(words, keep), axis=-1, separator=" ")

    # --- identity -----------------------------------------------------------------
    def __eq__(self, other):
        if not isinstance(other, UnitVocabulary):
            return NotImplemented
        return (
            type(self) is type(other)
            and self._num_units == other._num_units
            and self.extra_ids == other.extra_ids
        )

    def __hash__(self):
        return hash((type(self).__name__, self._num_units, self.extra_ids))

    def __repr__(self):
        return f"UnitVocabulary(num_units={self._num_units}, extra_ids={self.extra_ids})"
