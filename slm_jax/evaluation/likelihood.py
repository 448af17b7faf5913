"""Batched, sharded per-sequence log-likelihoods (the engine of the pair benchmarks).

`LikelihoodScorer(runner)(sequences)` returns, per `ScoredSequence`, four sums in float64:

    SUM_ALL / COUNT_ALL          log p of every target token / how many
    SUM_ENDING / COUNT_ENDING    the same over the ending's targets (ids[ending_start:])

Sequences are sorted by length into length buckets (`runner.bucket_length`: two shapes
per octave) and cut into batches of `batch_size` rows (a multiple of the data-parallel
size; a bucket's last batch is padded only to the next power of two), so a benchmark
compiles a handful of shapes and every device gets whole rows. One row is one
sequence: positions start at 0 and attention never crosses rows, exactly like a packed
training segment. Any registered model family works (`slm_jax.models.interface`): the
dense `Decoder`, the `LSTModel` (given each target's modality, which lays out its
patches; tokens beyond its global slots raise `UncoveredTokensError`).

Renormalisation (`ScoredSequence.renormalize_to` = a modality code): an ending token of
that modality is scored by a log-softmax over that modality's ids only (markers and EOS
keep the full softmax), the "within the ending's modality" variant of cross-modal scoring.

Excluded ids (`excluded_ids`, e.g. the span-corruption sentinels of a denoising-trained
model, `sequences.sentinel_mask`): every softmax leaves them out, so the probability a
model keeps for "a span starts here" does not lower the likelihood of plain sequences; a
scored sequence containing one is refused.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from slm_jax import contract
from slm_jax.contract import MODALITY_SPEECH, MODALITY_TEXT
from slm_jax.evaluation.runner import ModelRunner, bucket_length, replicated
from slm_jax.evaluation.sequences import model_inputs, run_bos
from slm_jax.models import interface

SUM_ALL, COUNT_ALL, SUM_ENDING, COUNT_ENDING = range(4)


@dataclasses.dataclass(frozen=True)
class ScoredSequence:
    ids: np.ndarray  # int32 targets
    ending_start: int
    renormalize_to: int = 0  # MODALITY_TEXT / MODALITY_SPEECH: renormalised ending tokens; 0: none


class UncoveredTokensError(ValueError):
    """An LST model ran out of global slots (LSTConfig.global_length) for a scored sequence."""


class LikelihoodScorer:
    """Scores lists of sequences with `runner`'s model (see the module docstring).

    `modality_of_id`: int [vocab_size] `MODALITY_*` of every id (required by families with
    `needs_modality` and for renormalised scoring). `batch_size`: rows per batch, >= 1 (rounded
    up to the data-parallel size). `bos_id`: the input before each sequence's first token; None:
    the run's (`slm_jax.data.feature_converter.run_bos_id`), so a sequence is scored as
    `log p(ids | BOS)`, exactly as training packs feed it. `excluded_ids`: bool [vocab_size], ids
    left out of every softmax (module docstring); None: none. Raises ValueError on a bad batch
    size or BOS id, a `modality_of_id` / `excluded_ids` of the wrong length or a missing one the
    model needs.
    """

    def __init__(self, runner: ModelRunner, modality_of_id: np.ndarray | None = None, batch_size: int = 16,
                 bos_id: int | None = None, excluded_ids: np.ndarray | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.runner = runner
        self.batch_size = runner.padded_rows(batch_size)
        self.bos_id = run_bos(bos_id)
        vocab_size = runner.dense_config.vocab_size
        if modality_of_id is not None and len(modality_of_id) != vocab_size:
            raise ValueError(f"modality_of_id has {len(modality_of_id)} entries but the model has "
                             f"{vocab_size} ids (use sequences.modality_of_ids(vocabulary, vocab_size))")
        if modality_of_id is None and runner.family.needs_modality:
            raise ValueError(f"{runner.family.name} needs modality_of_id (it reads each target's "
                             "modality, e.g. to lay out patches)")
        self.modality_of_id = np.zeros(vocab_size, np.int32) if modality_of_id is None else \
            np.asarray(modality_of_id, np.int32)
        self.has_modalities = modality_of_id is not None
        if excluded_ids is not None and len(excluded_ids) != vocab_size:
            raise ValueError(f"excluded_ids has {len(excluded_ids)} entries but the model has {vocab_size} ids")
        self.excluded = None if excluded_ids is None or not np.any(excluded_ids) else np.asarray(excluded_ids, bool)

    def __call__(self, sequences: list[ScoredSequence]) -> np.ndarray:
        """float64 [len(sequences), 4] (SUM_ALL, COUNT_ALL, SUM_ENDING, COUNT_ENDING), log p in nats.
        Raises ValueError for renormalised scoring without modality_of_id, UncoveredTokensError
        when the model cannot predict a scored token."""
        out = np.zeros((len(sequences), 4), np.float64)
        renormalize = any(s.renormalize_to for s in sequences)
        if renormalize and not self.has_modalities:
            raise ValueError("renormalised scoring needs modality_of_id")
        if self.excluded is not None:
            for i, s in enumerate(sequences):
                hit = np.asarray(s.ids)[self.excluded[np.asarray(s.ids)]]
                if hit.size:
                    raise ValueError(f"sequence {i} contains id {int(hit[0])}, which the scorer excludes from the "
                                     "softmax (a span-corruption sentinel?); score it with excluded_ids=None "
                                     "(`slm-jax eval --score_sentinels`)")
        excluded = np.zeros(self.runner.dense_config.vocab_size, bool) if self.excluded is None else self.excluded
        runner, pending = self.runner, []
        for rows, batch in self._batches(sequences):  # dispatched asynchronously: the host packs the next
            with runner.context():                     # batch while the devices score this one
                pending.append((rows, sequence_sums(runner.model, renormalize, self.excluded is not None,
                                                    runner.on_mesh, runner.params, self.modality_of_id, excluded,
                                                    *(runner.put_rows(a) for a in batch))))
        for rows, sums in pending:
            sums = np.asarray(sums, np.float64)
            if sums[:, 4].any():
                raise UncoveredTokensError(
                    f"{int(sums[:, 4].sum())} scored tokens fell beyond the LST model's global slots; raise "
                    f"LSTConfig.global_length (or set it to None) to score sequences this long")
            out[rows] = sums[: len(rows), :4]
        return out

    def _batches(self, sequences):
        """(indices of the sequences, host arrays) per batch: rows sorted by length, bucketed."""
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i].ids))
        by_bucket: dict[int, list[int]] = {}
        for i in order:
            by_bucket.setdefault(bucket_length(len(sequences[i].ids)), []).append(i)
        for length, members in by_bucket.items():
            for start in range(0, len(members), self.batch_size):
                rows = members[start:start + self.batch_size]
                yield rows, self._pack([sequences[i] for i in rows], self.runner.rows_for(len(rows), self.batch_size),
                                       length)

    def _pack(self, seqs: list[ScoredSequence], rows: int, length: int):
        inputs = np.zeros((rows, length), np.int32)
        targets = np.zeros((rows, length), np.int32)
        valid = np.zeros((rows, length), bool)
        ending = np.zeros((rows, length), bool)
        restrict = np.zeros((rows, length), np.int32)
        for r, seq in enumerate(seqs):
            n = len(seq.ids)
            inputs[r, :n] = model_inputs(seq.ids, self.bos_id)
            targets[r, :n] = seq.ids
            valid[r, :n] = True
            ending[r, seq.ending_start:n] = True
            if seq.renormalize_to:
                same = self.modality_of_id[seq.ids] == seq.renormalize_to
                restrict[r, :n] = np.where(ending[r, :n] & same, seq.renormalize_to, 0)
        return inputs, targets, valid, ending, restrict


def model_logits(model, params, inputs, targets, valid, modality_of_id):
    """(fp32 logits [b, t, vocab], covered bool [b, t]) of one padded batch, one sequence per row:
    inputs / targets int32 [b, t], valid bool [b, t], modality_of_id int32 [vocab]."""
    features = {
        contract.DECODER_INPUT_TOKENS: inputs,
        contract.DECODER_SEGMENT_IDS: valid.astype(jnp.int32),
        contract.DECODER_POSITIONS: jnp.broadcast_to(jnp.arange(inputs.shape[1]), inputs.shape),
        contract.DECODER_MODALITY: jnp.where(valid, jnp.take(modality_of_id, targets), contract.MODALITY_PAD),
        contract.DECODER_PATCH_IDS: jnp.full_like(inputs, -1),  # no word alignments: static patches
    }
    out = interface.family_of(model).forward(model, params, features)
    return out.logits, (valid if out.covered is None else out.covered)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def sequence_sums(model, renormalize: bool, exclude: bool, on_mesh: bool, params, modality_of_id, excluded, inputs,
                  targets, valid, ending, restrict):
    """[b, 5] per row: the four sums (module docstring) and the count of uncovered (LST) targets.
    `excluded`: bool [vocab], ids left out of every softmax when `exclude`."""
    logits, covered = model_logits(model, params, inputs, targets, valid, modality_of_id)
    if exclude:
        logits = jnp.where(excluded, -jnp.inf, logits)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    logp = target_logit - jax.nn.logsumexp(logits, axis=-1)
    if renormalize:
        kinds = modality_of_id
        for code in (MODALITY_TEXT, MODALITY_SPEECH):
            within = target_logit - jax.nn.logsumexp(jnp.where(kinds == code, logits, -jnp.inf), axis=-1)
            logp = jnp.where(restrict == code, within, logp)
    valid_f, ending_f = valid.astype(jnp.float32), ending.astype(jnp.float32)
    logp = jnp.where(valid, logp, 0.0)
    uncovered = jnp.sum(valid & ~covered, axis=1).astype(jnp.float32)
    sums = jnp.stack([jnp.sum(logp, 1), jnp.sum(valid_f, 1), jnp.sum(logp * ending_f, 1), jnp.sum(ending_f, 1),
                      uncovered], axis=1)
    return replicated(sums, on_mesh)
