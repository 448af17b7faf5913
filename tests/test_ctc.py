"""mSLAM auxiliary CTC: char vocabulary, packed-segment CTC against optax, TF targets, a toy fit."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow as tf
from seqio import utils as seqio_utils

from slm_jax.data.preprocessors.ctc_targets import add_ctc_targets, add_empty_ctc_targets, sentinel_id
from slm_jax.data.tokenizers.chars import CharVocabulary
from slm_jax.evaluation.metrics_text import char_error_rate
from slm_jax.models.ctc import (
    CTCHead,
    ctc_greedy_decode,
    ctc_greedy_decode_segments,
    ctc_loss_from_batch,
    ctc_loss_per_segment,
    ctc_loss_rows,
    ctc_targets_from_packed,
    gather_segment_frames,
    speech_frame_mask,
)
from slm_jax.models.decoder import Decoder, DecoderConfig

# XLA's CPU compiler spends seconds optimising each CTC scan (and its transpose); these
# tests care about values, not kernel speed, so they compile with the cheap pipeline.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
_jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)


# ----------------------------------------------------------------------------- vocabulary


def test_char_vocabulary_round_trip():
    vocab = CharVocabulary("abc' ")
    assert vocab.size == 6 and vocab.blank_id == 0 and vocab.unk_id is None
    ids = vocab.encode("a cab'")
    assert ids == [1, 5, 3, 1, 2, 4]
    assert vocab.decode(ids) == "a cab'"
    assert vocab.decode([0, 1, 0, 0, 2]) == "ab"  # blanks dropped
    assert vocab.lowercase_only and vocab.encode("ABC") == [1, 2, 3]
    built = CharVocabulary.from_texts(["the cat", "a bat", "tab"])
    assert built.alphabet == " abceht"
    assert built == CharVocabulary.from_texts(["tab", "a bat", "the cat"])  # order-independent
    assert CharVocabulary.from_texts(["Ab"]).alphabet == "Ab" and not CharVocabulary("Ab").lowercase_only
    assert CharVocabulary.from_texts(["Ab"], lowercase=True).alphabet == "ab"
    assert vocab.padded_size(4) == 8
    with pytest.raises(ValueError, match="duplicate"):
        CharVocabulary("abca")
    with pytest.raises(ValueError, match="outside"):
        vocab.decode([7])


def test_char_vocabulary_unknown_char():
    vocab = CharVocabulary("abc")
    with pytest.raises(ValueError, match=r"\['x', 'z'\]"):
        vocab.encode("axbz")
    with_unk = CharVocabulary("abc", unk=True)
    assert with_unk.size == 5 and with_unk.unk_id == 4
    assert with_unk.encode("axb") == [1, 4, 2]
    assert with_unk.decode([1, 4, 2]) == "a<unk>b"


def test_char_vocabulary_json_round_trip(tmp_path):
    vocab = CharVocabulary("aé ü'\"\\", unk=True)
    assert CharVocabulary.from_json(vocab.to_json()) == vocab
    vocab.save(str(tmp_path / "chars.json"))
    loaded = CharVocabulary.load(str(tmp_path / "chars.json"))
    assert loaded == vocab and loaded.encode("é ü") == vocab.encode("é ü")
    with pytest.raises(ValueError, match="not a CharVocabulary"):
        CharVocabulary.from_json('{"alphabet": "ab"}')


# ----------------------------------------------------------------------------- head


def test_ctc_head_logical_axes_and_fp32():
    head = CTCHead(num_classes=8, embed_dim=16, dtype=jnp.bfloat16)
    hidden = jnp.ones((2, 5, 16), jnp.bfloat16)
    variables = head.init(jax.random.key(0), hidden)
    kernel = variables["params"]["proj"]["kernel"]
    assert isinstance(kernel, nn.Partitioned) and kernel.names == ("embed", "vocab")
    assert variables["params"]["proj"]["bias"].names == ("vocab",)
    out = head.apply(variables, hidden)
    assert out.shape == (2, 5, 8) and out.dtype == jnp.float32


# ----------------------------------------------------------------------------- packed CTC vs optax


def _packed_case():
    """2 rows x T=20, S=3 segment slots, C=7 classes, random (non-zero) logits.

    Row 0: segment 1 = [marker, 6 speech, 2 text]; segment 2 = [marker, 5 speech, text];
           padded tail of 3 (speech_mask set there too: must be ignored).
    Row 1: segment 1 has speech but NO targets; segment 2 interleaves speech and text
           (non-contiguous frames); segment 3 has targets but no speech.
    """
    b, t, c, s, l = 2, 20, 7, 3, 4
    logits = jax.random.normal(jax.random.key(3), (b, t, c)) * 2.0 + 0.1
    seg = np.zeros((b, t), np.int32)
    speech = np.zeros((b, t), bool)
    seg[0, 0:9], seg[0, 9:17] = 1, 2
    speech[0, 1:7] = True
    speech[0, 10:15] = True
    speech[0, 17:] = True  # padding (segment 0)
    seg[1, 0:6], seg[1, 6:16], seg[1, 16:19] = 1, 2, 3
    speech[1, 1:5] = True
    speech[1, [7, 8, 10, 11, 12, 14]] = True
    targets = np.zeros((b, s, l), np.int32)
    lengths = np.zeros((b, s), np.int32)
    targets[0, 0, :3], lengths[0, 0] = [1, 2, 2], 3  # repeat needs a blank between
    targets[0, 1, :2], lengths[0, 1] = [3, 6], 2
    targets[1, 1, :4], lengths[1, 1] = [4, 5, 1, 5], 4
    targets[1, 2, :2], lengths[1, 2] = [2, 3], 2  # no speech -> nothing
    targets[1, 0, :] = 6  # garbage beyond length 0 must be ignored
    return logits, jnp.asarray(speech), jnp.asarray(seg), jnp.asarray(targets), jnp.asarray(lengths)


# One jitted entry point shared by the tests below: XLA's CPU compile of a CTC scan takes
# seconds, so every call with the `_packed_case` shapes and the same static options reuses it.
_loss = _jit(functools.partial(ctc_loss_per_segment, return_stats=True),
                static_argnames=("max_frames", "drop_infeasible"))


def _reference_loss(logits, speech, seg, targets, lengths):
    """Sum over segments of optax.ctc_loss on that segment's speech frames, one call per segment
    (frames picked with numpy index lists, exact lengths, no padding)."""
    speech, seg, targets, lengths = map(np.asarray, (speech, seg, targets, lengths))
    total, count = 0.0, 0
    for b in range(seg.shape[0]):
        for s in range(targets.shape[1]):
            idx = np.nonzero(speech[b] & (seg[b] == s + 1))[0]
            n = int(lengths[b, s])
            if n == 0 or len(idx) == 0:
                continue
            frames = logits[b, idx][None]
            labels = jnp.asarray(targets[b, s, :n])[None]
            total = total + optax.ctc_loss(frames, jnp.zeros((1, len(idx))), labels, jnp.zeros((1, n)))[0]
            count += 1
    return total, jnp.asarray(count)


@pytest.mark.slow
def test_ctc_loss_per_segment_matches_optax_per_segment():
    logits, speech, seg, targets, lengths = _packed_case()

    def ours(x):
        total, num, stats = ctc_loss_per_segment(x, speech, seg, targets, lengths, return_stats=True)
        return total, (num, stats)

    (loss, (num, stats)), grad = _jit(jax.value_and_grad(ours, has_aux=True))(logits)
    (ref, ref_num), ref_grad = _jit(jax.value_and_grad(
        lambda x: _reference_loss(x, speech, seg, targets, lengths), has_aux=True))(logits)
    assert int(ref_num) == 3 and float(num) == 3.0 and float(loss) > 1.0
    np.testing.assert_allclose(float(loss), float(ref), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(ref_grad), atol=1e-5)
    # no gradient reaches non-speech positions, padding, or segments without targets
    g = np.abs(np.asarray(grad)).sum(-1)
    assert g[0, 17:].sum() == 0 and g[0, 0] == 0 and g[1, :6].sum() == 0 and g[1, 9] == 0
    assert np.all(g[0, 1:7] > 0) and np.all(g[1, [7, 8, 10, 11, 12, 14]] > 0)
    assert int(stats["ctc_label_chars"]) == 9 and int(stats["ctc_frames"]) == 6 + 5 + 6
    assert int(stats["ctc_frames_beyond_segments"]) == 0

    # the shared jitted forward agrees, and so does a smaller frame budget that fits every segment
    np.testing.assert_allclose(float(_loss(logits, speech, seg, targets, lengths)[0]), float(ref), rtol=1e-5)
    np.testing.assert_allclose(float(_loss(logits, speech, seg, targets, lengths, max_frames=6)[0]), float(ref),
                               rtol=1e-5)


def test_gather_segment_frames_compacts_left():
    x = jnp.arange(12).reshape(1, 12)
    seg = jnp.array([[1, 1, 1, 1, 2, 2, 2, 2, 2, 0, 0, 0]])
    speech = jnp.array([[0, 1, 0, 1, 1, 0, 1, 1, 0, 1, 1, 0]], bool)
    frames, pad, counts = _jit(gather_segment_frames, static_argnums=(3, 4))(x, speech, seg, 3, 4)
    assert counts.tolist() == [[2, 3, 0]]
    assert frames[0, 0, :2].tolist() == [1, 3] and frames[0, 1, :3].tolist() == [4, 6, 7]
    assert pad.tolist() == [[[0, 0, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]]]


def test_infeasible_overlong_and_extra_segments_are_skipped_and_counted():
    logits, speech, seg, targets, lengths = _packed_case()
    # row 0 segment 2 has 5 frames: labels [3, 3, 3, 3] need 4 + 3 repeats = 7
    bad_targets = targets.at[0, 1].set(jnp.array([3, 3, 3, 3]))
    bad_lengths = lengths.at[0, 1].set(4)
    loss, num, stats = _loss(logits, speech, seg, bad_targets, bad_lengths)
    assert float(num) == 2 and int(stats["ctc_skipped_infeasible"]) == 1
    assert 1.0 < float(loss) < 1e3  # the ~1e5 loss of the impossible segment is left out
    _, num_all, stats = _loss(logits, speech, seg, bad_targets, bad_lengths, drop_infeasible=False)
    assert float(num_all) == 3 and int(stats["ctc_skipped_infeasible"]) == 0
    _, num_short, stats = _loss(logits, speech, seg, targets, lengths, max_frames=5)
    assert float(num_short) == 1 and int(stats["ctc_skipped_overlong"]) == 2  # two 6-frame segments > 5
    # a speech frame whose segment id (4) has no slot among S=3 is counted, not scored
    _, num4, stats = _loss(logits, speech, seg.at[1, 14].set(4), targets, lengths)
    assert float(num4) == 3 and int(stats["ctc_frames_beyond_segments"]) == 1


def test_ctc_loss_rows_matches_optax():
    logits = jax.random.normal(jax.random.key(5), (3, 10, 5)) + 0.3
    mask = jnp.asarray(np.array([[1] * 8 + [0] * 2, [1, 1, 0, 1, 1, 1, 1, 0, 1, 1], [1] * 10], bool))
    targets = jnp.array([[1, 2, 3], [4, 4, 0], [2, 0, 0]])
    lengths = jnp.array([3, 2, 0])
    loss, num = _jit(ctc_loss_rows)(logits, mask, targets, lengths)
    # rows 0 and 1 both have 8 frames once compacted: one optax call on the compacted rows
    frames = jnp.stack([logits[b][np.asarray(mask[b])][:8] for b in range(2)])
    label_pad = jnp.array([[0, 0, 0], [0, 0, 1]], jnp.float32)
    ref = _jit(optax.ctc_loss)(frames, jnp.zeros((2, 8)), targets[:2], label_pad)
    assert float(num) == 2
    np.testing.assert_allclose(float(loss), float(ref.sum()), rtol=1e-5)


def test_speech_frame_mask_and_loss_from_batch():
    modality = jnp.array([[3, 2, 2, 3, 1, 3, 2, 2, 3, 0]])
    seg = jnp.array([[1, 1, 1, 1, 1, 2, 2, 2, 2, 0]])
    assert speech_frame_mask(modality, seg, "targets").astype(int).tolist() == [[0, 1, 1, 0, 0, 0, 1, 1, 0, 0]]
    assert speech_frame_mask(modality, seg).astype(int).tolist() == [[0, 0, 1, 1, 0, 0, 0, 1, 1, 0]]
    with pytest.raises(ValueError, match="which"):
        speech_frame_mask(modality, seg, "both")
    # on the packed case: a modality row whose input-shifted speech mask is the case's mask
    logits, speech, seg, targets, lengths = _packed_case()
    target_speech = jnp.pad(speech[:, 1:], ((0, 0), (0, 1))) & (seg > 0)
    batch = {"decoder_modality": jnp.where(target_speech, 2, jnp.where(seg > 0, 1, 0)),
             "decoder_segment_ids": seg, "ctc_targets": targets, "ctc_target_lengths": lengths}
    mask = speech_frame_mask(batch["decoder_modality"], seg)
    assert (np.asarray(mask) == (np.asarray(speech) & (np.asarray(seg) > 0))).all()
    loss, num, _ = _jit(functools.partial(ctc_loss_from_batch, return_stats=True))(logits, batch)
    ref, ref_num, _ = _loss(logits, speech, seg, targets, lengths)
    assert float(num) == float(ref_num) == 3 and float(loss) == pytest.approx(float(ref), rel=1e-6)


def test_greedy_decode():
    a, b_, blank = 1, 2, 0
    path = [a, a, blank, a, b_, b_, a, a]  # last two frames padded
    logits = jax.nn.one_hot(jnp.array([path]), 4) * 5.0
    paddings = jnp.array([[0, 0, 0, 0, 0, 0, 1, 1]])
    decode = _jit(ctc_greedy_decode)
    ids, lengths = decode(logits, paddings)
    assert int(lengths[0]) == 3 and ids[0, :3].tolist() == [a, a, b_] and ids[0, 3:].sum() == 0
    # padded frames in the middle are removed before collapsing
    ids, lengths = decode(logits, jnp.array([[0, 1, 0, 1, 1, 1, 1, 1]]))
    assert ids[0, :int(lengths[0])].tolist() == [a]
    assert char_error_rate(["abc", "de"], ["abd", "de"]) == pytest.approx(1 / 5)


# ----------------------------------------------------------------------------- TF preprocessor


def _records(rows):
    return tf.data.Dataset.from_tensor_slices({"id": [r[0] for r in rows], "text": [r[1] for r in rows]})


def test_add_ctc_targets_exact_ids(tmp_path):
    vocab = CharVocabulary("abcdeé' ")
    ds = add_ctc_targets(_records([("r1", "a bad cab"), ("r2", "Éde'"), ("r3", "")]), vocab)
    got = [(ex["id"].decode(), ex["ctc_targets"].tolist()) for ex in ds.as_numpy_iterator()]
    assert got == [("r1", [1, 8, 2, 1, 4, 8, 3, 1, 2]), ("r2", [6, 4, 5, 7]), ("r3", [])]
    assert got[0][1] == vocab.encode("a bad cab") and got[1][1] == vocab.encode("Éde'")
    assert ds.element_spec["ctc_targets"].dtype == tf.int32
    # pure TF ops: the iterator position can be checkpointed (exact resume)
    it = iter(ds)
    next(it)
    path = tf.train.Checkpoint(it=it).write(str(tmp_path / "it"))
    restored = iter(ds)
    tf.train.Checkpoint(it=restored).read(path).assert_consumed()
    assert next(restored)["id"] == b"r2"
    cased = CharVocabulary("Aa")  # not lowercase-only: case is kept
    got = [ex["ctc_targets"].tolist() for ex in add_ctc_targets(_records([("x", "aA")]), cased).as_numpy_iterator()]
    assert got == [[2, 1]]
    with_unk = CharVocabulary("ab", unk=True)
    got = [ex["ctc_targets"].tolist() for ex in add_ctc_targets(_records([("x", "azb")]), with_unk,
                                                                packing_sentinel=True).as_numpy_iterator()]
    assert got == [[sentinel_id(with_unk), 1, 3, 2]]


def test_add_ctc_targets_errors_name_the_record():
    vocab = CharVocabulary("abc ")
    ds = add_ctc_targets(_records([("ok-1", "abc"), ("bad-rec-7", "ab?c!")]), vocab)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"(?s)bad-rec-7.*\?.*!"):
        list(ds.as_numpy_iterator())
    ds = add_ctc_targets(_records([("ok-1", "abc"), ("long-rec-3", "abcabc")]), vocab, max_chars=5)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"(?s)long-rec-3.*max_chars"):
        list(ds.as_numpy_iterator())
    with pytest.raises(KeyError, match="transcript"):
        add_ctc_targets(_records([("a", "b")]), vocab, text_key="transcript")


def test_ctc_targets_from_packed_with_sentinel_keeps_segments_aligned():
    vocab = CharVocabulary("abc")
    rows = [("u1", "ab", [5, 6, 7, 1]), ("u2", None, [8, 9, 1]), ("u3", "cca", [2, 2, 1])]

    def gen():
        for rid, text, toks in rows:
            yield {"id": rid, "text": text or "", "paired": text is not None, "targets": np.array(toks, np.int32)}

    spec = {"id": tf.TensorSpec([], tf.string), "text": tf.TensorSpec([], tf.string),
            "paired": tf.TensorSpec([], tf.bool), "targets": tf.TensorSpec([None], tf.int32)}
    ds = tf.data.Dataset.from_generator(gen, output_signature=spec)
    paired = add_ctc_targets(ds.filter(lambda ex: ex["paired"]), vocab, packing_sentinel=True)
    unpaired = add_empty_ctc_targets(ds.filter(lambda ex: tf.logical_not(ex["paired"])), vocab,
                                     packing_sentinel=True)
    order = {"u1": 0, "u2": 1, "u3": 2}
    merged = sorted(list(paired.as_numpy_iterator()) + list(unpaired.as_numpy_iterator()),
                    key=lambda ex: order[ex["id"].decode()])
    ds = tf.data.Dataset.from_generator(
        lambda: ({"targets": ex["targets"], "ctc_targets": ex["ctc_targets"]} for ex in merged),
        output_signature={"targets": tf.TensorSpec([None], tf.int32), "ctc_targets": tf.TensorSpec([None], tf.int32)})
    packed = next(seqio_utils.trim_and_pack_dataset(ds, {"targets": 12, "ctc_targets": 10}).as_numpy_iterator())
    assert packed["targets_segment_ids"].tolist()[:10] == [1, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    targets, lengths = ctc_targets_from_packed(packed["ctc_targets"][None], packed["ctc_targets_segment_ids"][None],
                                               packed["ctc_targets_positions"][None], num_segments=3,
                                               leading_sentinel=True)
    assert lengths.tolist() == [[2, 0, 3]]
    assert targets[0, 0, :2].tolist() == [1, 2] and targets[0, 2, :3].tolist() == [3, 3, 1]
    assert int(targets.sum()) == 1 + 2 + 3 + 3 + 1


# ----------------------------------------------------------------------------- toy fit

TOY_ALPHABET = "abcdefgh"
SPEECH_MARK, TEXT_MARK, FIRST_UNIT, FIRST_TEXT, TOY_VOCAB = 1, 2, 3, 30, 40


def _toy_units():
    """Each character -> 2 or 3 fixed, distinct unit ids (a learnable mapping)."""
    rng = np.random.default_rng(0)
    ids = rng.permutation(np.arange(FIRST_UNIT, FIRST_TEXT))
    out, k = {}, 0
    for i, c in enumerate(TOY_ALPHABET):
        n = 2 + i % 2
        out[c] = ids[k:k + n].tolist()
        k += n
    return out


def _toy_batch(rng, vocab, units, batch, length=48, segs=2, max_label=5):
    """Packed rows: per segment [Speech] units [Text] 2 text tokens; padded tail."""
    tokens = np.zeros((batch, length), np.int32)
    seg = np.zeros((batch, length), np.int32)
    pos = np.zeros((batch, length), np.int32)
    speech = np.zeros((batch, length), bool)
    targets = np.zeros((batch, segs, max_label), np.int32)
    lengths = np.zeros((batch, segs), np.int32)
    words = []
    for b in range(batch):
        t = 0
        for s in range(segs):
            word = "".join(rng.choice(list(TOY_ALPHABET), rng.integers(2, max_label + 1)))
            words.append(word)
            u = [x for c in word for x in units[c]]
            row = [SPEECH_MARK] + u + [TEXT_MARK] + rng.integers(FIRST_TEXT, TOY_VOCAB, 2).tolist()
            n = len(row)
            tokens[b, t:t + n], seg[b, t:t + n], pos[b, t:t + n] = row, s + 1, np.arange(n)
            speech[b, t + 1:t + 1 + len(u)] = True
            ids = vocab.encode(word)
            targets[b, s, :len(ids)], lengths[b, s] = ids, len(ids)
            t += n
    arrays = tuple(jnp.asarray(x) for x in (tokens, seg, pos, speech, targets, lengths))
    return arrays, words


class _ToyCTCModel(nn.Module):
    cfg: DecoderConfig
    num_classes: int

    @nn.compact
    def __call__(self, tokens, seg, pos):
        hidden = Decoder(self.cfg, name="decoder")(tokens, seg, pos, return_logits=False, return_hidden=True).hidden
        return CTCHead(self.num_classes, self.cfg.embed_dim, init_std=0.1, dtype=jnp.float32, name="ctc")(hidden)


@pytest.mark.slow
def test_ctc_loss_falls_on_toy_paired_set():
    vocab = CharVocabulary(TOY_ALPHABET)
    units = _toy_units()
    cfg = DecoderConfig(vocab_size=TOY_VOCAB, embed_dim=32, num_layers=2, num_heads=2, num_kv_heads=2, mlp_dim=64,
                        init_std=0.1, dtype="float32", scan_layers=False)  # unscanned: faster CPU compile
    model = _ToyCTCModel(cfg, vocab.size)
    rng = np.random.default_rng(1)
    (tokens, seg, pos, _, _, _), _ = _toy_batch(rng, vocab, units, 16)
    params = _jit(lambda key: nn.unbox(model.init(key, tokens, seg, pos)["params"]))(jax.random.key(0))
    opt = optax.adam(3e-3)
    opt_state = opt.init(params)

    def loss_fn(p, batch):
        tokens, seg, pos, speech, targets, lengths = batch
        logits = model.apply({"params": p}, tokens, seg, pos)
        total, num = ctc_loss_per_segment(logits, speech, seg, targets, lengths)
        return total / jnp.maximum(num, 1.0)

    @_jit
    def step(p, o, batch):
        loss, grads = jax.value_and_grad(loss_fn)(p, batch)
        updates, o = opt.update(grads, o, p)
        return optax.apply_updates(p, updates), o, loss

    losses = []
    for _ in range(100):
        batch, _ = _toy_batch(rng, vocab, units, 16)
        params, opt_state, loss = step(params, opt_state, batch)
        losses.append(loss)
    losses = np.asarray(jax.device_get(losses))
    assert np.all(np.isfinite(losses))
    initial, final = losses[:3].mean(), losses[-5:].mean()
    assert final < 0.3 * initial, (initial, final)

    @_jit
    def decode(p, tokens, seg, pos, speech):
        logits = model.apply({"params": p}, tokens, seg, pos)
        return ctc_greedy_decode_segments(logits, speech, seg, num_segments=2)

    (tokens, seg, pos, speech, _, _), words = _toy_batch(np.random.default_rng(99), vocab, units, 16)
    ids, n = jax.device_get(decode(params, tokens, seg, pos, speech))
    hyps = [vocab.decode(ids[b, s, :n[b, s]]) for b in range(16) for s in range(2)]
    cer = char_error_rate(words, hyps)
    assert cer < 0.3, (cer, list(zip(words, hyps))[:8])
