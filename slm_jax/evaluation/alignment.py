"""Cross-lingual alignment of hidden states for parallel utterances (Moumen et al.).

For N parallel utterances (EN_i, FR_i) the dense decoder's hidden states are mean-pooled
over each utterance's content tokens (units or text; not BOS, markers or tags), at every
layer (the embeddings are layer 0). Per layer:

    cos_parallel   mean_i cos(EN_i, FR_i)
    cos_random     mean_{i != j} cos(EN_i, FR_j)   (every mismatched pair: exact, no sampling)
    r1_<a>_<b>     retrieval accuracy@1: fraction of i whose most similar <b> item is <b>_i
    r1_<b>_<a>     the same in the other direction

The summary averages layers 1..L (the transformer blocks). `evaluate_alignment` also returns
per-item values (`items`: each item's cos_parallel and its mean cosine to the OTHER items'
translations, both averaged over layers 1..L), so a result gets a bootstrap interval over items
and two runs a paired comparison (`slm_jax.evaluation.stats`); their means are the summary's
cos_parallel and cos_random exactly. Parallel utterances come from
paired corpus records (`slm_jax.data.corpus.pair_parallel`, the demo's `paired/`), whole
(`level="utterance"`) or cut into their aligned sentences (`level="sentence"`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from slm_jax import contract
from slm_jax.contract import MODALITY_SPEECH, MODALITY_TEXT
from slm_jax.evaluation.runner import ModelRunner, bucket_length, replicated
from slm_jax.evaluation.sequences import Segment, SequenceFormat, model_inputs, modality_of_ids, run_bos
from slm_jax.models import interface

LEVELS = ("utterance", "sentence")


@dataclasses.dataclass(frozen=True)
class ParallelItem:
    id: str
    a: Segment
    b: Segment


# --- parallel data ------------------------------------------------------------------------
def _sentences(units, starts, ends, rate) -> list[list[int]]:
    """Each sentence's units by the corpus rule (`preprocessors.common.word_frames`, as the
    cross-lingual task cuts them: a sentence covering no frame start takes the frame it lies in)."""
    from slm_jax.data.preprocessors.common import word_frames_np
    lo, hi, _ = word_frames_np(np.asarray(starts, np.float32), np.asarray(ends, np.float32), rate, len(units))
    return [list(units[a:b]) for a, b in zip(lo, hi)]


def parallel_items(records, langs: tuple[str, str] = ("en", "fr"), level: str = "utterance",
                   max_items: int | None = None, source: str = "<records>") -> list[ParallelItem]:
    """Paired corpus records (`PAIRED_TFRECORD_FEATURES` keys) -> items with `a` in langs[0]."""
    if level not in LEVELS:
        raise ValueError(f"level={level!r}: expected one of {LEVELS}")
    items = []
    for record in records:
        sides = {record["a_lang"]: "a", record["b_lang"]: "b"}
        if set(sides) != set(langs):
            raise ValueError(f"{source}: paired record {record['id']!r} has languages {sorted(sides)}, "
                             f"expected {list(langs)}")
        first, second = sides[langs[0]], sides[langs[1]]
        if level == "utterance":
            pieces = [(record["id"], record[f"{first}_units"], record[f"{second}_units"])]
        else:
            rate = float(record["unit_rate_hz"])
            cut = {s: _sentences(record[f"{s}_units"], record[f"{s}_sentence_start"], record[f"{s}_sentence_end"],
                                 rate) for s in ("a", "b")}
            pieces = [(f"{record['id']}#{i}", x, y) for i, (x, y) in enumerate(zip(cut[first], cut[second]))]
        for item_id, a_units, b_units in pieces:
            if not len(a_units) or not len(b_units):
                raise ValueError(f"{source}: paired record {item_id!r} has an empty side")
            items.append(ParallelItem(item_id, Segment.speech(a_units, langs[0]), Segment.speech(b_units, langs[1])))
            if max_items is not None and len(items) >= max_items:
                return items
    return items


def load_parallel(pattern: str, langs: tuple[str, str] = ("en", "fr"), level: str = "utterance",
                  max_items: int | None = None) -> list[ParallelItem]:
    """Parallel items from paired TFRecord shards (e.g. the demo's `paired/validation-*.tfrecord`)."""
    from slm_jax.data import corpus
    records = corpus.read_paired_tfrecord(pattern)
    items = parallel_items(records, langs, level, max_items, source=pattern)
    if len(items) < 2:
        raise ValueError(f"{pattern}: {len(items)} parallel item(s); alignment needs at least 2")
    return items


# --- hidden states ------------------------------------------------------------------------
def pooled_hidden_states(runner: ModelRunner, fmt: SequenceFormat, segments: Sequence[Segment],
                         batch_size: int = 16, bos_id: int | None = None) -> np.ndarray:
    """float32 [n, layers + 1, embed]: each segment's hidden states mean-pooled over its content
    tokens, per layer (0 = embeddings). Each segment is read behind `bos_id` (None: the run's
    BOS, `slm_jax.data.feature_converter.run_bos_id`), as in training. Raises ValueError for a
    model family without per-layer hidden states (`ModelFamily.has_layer_hidden`)."""
    if not runner.family.has_layer_hidden:
        raise ValueError(f"hidden-state alignment needs per-layer hidden states (the dense Decoder's); got "
                         f"{runner.family.name}")
    cfg = runner.dense_config
    kinds = modality_of_ids(fmt.vocabulary, cfg.vocab_size)
    bos_id = run_bos(bos_id)
    inputs = [model_inputs(fmt.encode([seg]).ids, bos_id) for seg in segments]
    rows = runner.padded_rows(batch_size)
    out = np.zeros((len(segments), cfg.num_layers + 1, cfg.embed_dim), np.float32)
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
    for start in range(0, len(order), rows):
        members = order[start:start + rows]
        length = bucket_length(max(len(inputs[i]) for i in members))
        shape = (runner.rows_for(len(members), rows), length)
        tokens, valid, pooled = (np.zeros(shape, dtype) for dtype in (np.int32, bool, bool))
        for r, i in enumerate(members):
            n = len(inputs[i])
            tokens[r, :n], valid[r, :n] = inputs[i], True
            pooled[r, 1:n] = np.isin(kinds[inputs[i][1:]], (MODALITY_SPEECH, MODALITY_TEXT))  # never BOS
        with runner.context():
            states = pooled_layers(runner.model, runner.on_mesh, runner.params,
                                   *(runner.put_rows(x) for x in (tokens, valid, pooled)))
        out[members] = np.asarray(states)[:len(members)]
    return out


@functools.partial(jax.jit, static_argnums=(0, 1))
def pooled_layers(model, on_mesh: bool, params, tokens, valid, pooled):
    """[b, layers + 1, d]: mean over the `pooled` positions of every layer's states."""
    features = {contract.DECODER_INPUT_TOKENS: tokens, contract.DECODER_SEGMENT_IDS: valid.astype(jnp.int32)}
    hidden = interface.family_of(model).forward(model, params, features, logits=False, layer_hidden=True).layer_hidden
    weights = pooled.astype(jnp.float32)
    sums = jnp.einsum("lbtd,bt->bld", hidden.astype(jnp.float32), weights)
    return replicated(sums / jnp.maximum(jnp.sum(weights, axis=1), 1.0)[:, None, None], on_mesh)


# --- metrics ------------------------------------------------------------------------------
def alignment_metrics(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """Per-layer cos_parallel, cos_random, r1_ab, r1_ba for parallel [n, layers, d] arrays."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 3 or a.shape[0] < 2:
        raise ValueError(f"alignment_metrics: expected two [n >= 2, layers, dim] arrays of one shape, "
                         f"got {a.shape} and {b.shape}")
    n = a.shape[0]
    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)  # noqa: E731
    sim = np.einsum("ild,jld->lij", unit(a), unit(b))  # [layers, n, n]
    diagonal = np.einsum("lii->li", sim)
    target = np.arange(n)
    return {
        "cos_parallel": diagonal.mean(axis=1),
        "cos_random": (sim.sum(axis=(1, 2)) - diagonal.sum(axis=1)) / (n * (n - 1)),
        "r1_ab": (sim.argmax(axis=2) == target).mean(axis=1),
        "r1_ba": (sim.argmax(axis=1) == target).mean(axis=1),
    }


def item_values(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """Per item i (float64 [n] each), averaged over layers 1..L (layer 0 alone for a 1-layer array):
    `cos_parallel` cos(a_i, b_i) and `cos_random` the mean over j != i of (cos(a_i, b_j) + cos(a_j, b_i)) / 2.
    Their means over items equal `alignment_metrics`' cos_parallel and cos_random (layer means)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n = a.shape[0]
    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)  # noqa: E731
    sim = np.einsum("ild,jld->lij", unit(a), unit(b))  # [layers, n, n]
    sim = sim[1:] if sim.shape[0] > 1 else sim
    diagonal = np.einsum("lii->li", sim)
    others = (sim.sum(axis=2) + sim.sum(axis=1) - 2 * diagonal) / (2 * (n - 1))
    return {"cos_parallel": diagonal.mean(axis=0), "cos_random": others.mean(axis=0)}


def summarize(per_layer: dict[str, np.ndarray], langs: tuple[str, str] = ("en", "fr")) -> dict:
    """Means over layers 1..L, named with the languages, plus the per-layer lists."""
    names = {"cos_parallel": "cos_parallel", "cos_random": "cos_random",
             "r1_ab": f"r1_{langs[0]}_{langs[1]}", "r1_ba": f"r1_{langs[1]}_{langs[0]}"}
    summary = {names[k]: float(np.mean(v[1:] if len(v) > 1 else v)) for k, v in per_layer.items()}
    summary["per_layer"] = {names[k]: [float(x) for x in v] for k, v in per_layer.items()}
    return summary


def evaluate_alignment(runner: ModelRunner, fmt: SequenceFormat, items: Sequence[ParallelItem],
                       batch_size: int = 16, langs: tuple[str, str] = ("en", "fr"), bos_id: int | None = None) -> dict:
    states = pooled_hidden_states(runner, fmt, [x.a for x in items] + [x.b for x in items], batch_size, bos_id)
    n = len(items)
    per_item = item_values(states[:n], states[n:])
    records = [{"id": item.id, "cos_parallel": float(per_item["cos_parallel"][i]),
                "cos_random": float(per_item["cos_random"][i])} for i, item in enumerate(items)]
    return {**summarize(alignment_metrics(states[:n], states[n:]), langs), "num_items": n, "items": records}

