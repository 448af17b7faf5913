"""Span corruption / prefix LM / UL2 mixtures (slm_jax.data.preprocessors.span_corruption).

The corrupted input and the target spans restore the original exactly; the noise counts
equal a plain Python transcription of T5's `random_spans_noise_mask` for every chunk, and
the span layout is distributed like the transcription's (chi-square tests, each with a
control that a wrong rule fails); loss weights are zero outside the targets; the same seed
gives the same spans, a restored data iterator continues them, and the batched and
per-record paths agree.
"""
import dataclasses
import functools
import random

import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf
from scipy import stats

from slm_jax import contract as c
from slm_jax.data import corpus, registration
from slm_jax.data.feature_converter import SLMFeatureConverter
from slm_jax.data.pipeline import DataIterator, DatasetConfig
from slm_jax.data.preprocessors import interleave
from slm_jax.data.preprocessors import span_corruption as sc
from slm_jax.data.preprocessors.common import unbatch_records
from slm_jax.data.tokenizers.spm import train_sentencepiece
from slm_jax.data.tokenizers.token_space import SpeechTextVocabulary, sentinel_block

NUM_UNITS = 50
VOCAB = SpeechTextVocabulary(None, num_units=NUM_UNITS, langs=("en", "fr"), num_sentinels=100)


# --- a plain transcription of T5's rule (t5/data/preprocessors.py: random_spans_noise_mask) ---------
def t5_counts(length, density, mean_span):
    length = max(length, 2)
    noise = int(np.round(np.float32(length) * np.float32(density)))
    noise = min(max(noise, 1), length - 1)
    spans = max(int(np.round(np.float32(noise) / np.float32(mean_span))), 1)
    return noise, spans


def t5_noise_mask(length, density, mean_span, rng):
    orig, length = length, max(length, 2)
    noise, spans = t5_counts(length, density, mean_span)

    def segmentation(items, segments):
        starts = [0] + sorted(rng.sample(range(1, items), segments - 1))
        return [b - a for a, b in zip(starts, starts[1:] + [items])]

    noise_lengths = segmentation(noise, spans)
    plain_lengths = segmentation(length - noise, spans)
    mask = []
    for plain, noisy in zip(plain_lengths, noise_lengths):
        mask += [False] * plain + [True] * noisy
    return mask[:orig]


def test_transcription_matches_t5_worked_example():
    """T5's docstring example: length 20 at 0.15 / 3 -> 3 noise tokens in 1 span, at the end of a
    non-noise run (the rule starts with non-noise and ends with noise)."""
    assert t5_counts(20, 0.15, 3.0) == (3, 1)
    mask = t5_noise_mask(20, 0.15, 3.0, random.Random(0))
    assert mask == [False] * 17 + [True] * 3


# --- helpers ------------------------------------------------------------------------------------------
def _records(lengths, seed=0):
    rs = np.random.RandomState(seed)
    return [{"id": f"r{i}", "units": rs.randint(0, NUM_UNITS, size=n).astype(np.int64)} for i, n in enumerate(lengths)]


def _dataset(records):
    return tf.data.Dataset.from_generator(lambda: iter(records), output_signature={
        "id": tf.TensorSpec([], tf.string), "units": tf.TensorSpec([None], tf.int64)})


def _run(build, seed=1234):
    with seqio.map_seed_manager(seed):
        ds = build()
    return list(ds.as_numpy_iterator())


def _corrupt(records, length=None, seed=1234, denoisers=None, vocab=VOCAB):
    lengths = {"targets": length} if length else None
    return _run(lambda: sc.denoise(interleave.speech_only(_dataset(records), vocab, dedup=False), lengths,
                                   vocabulary=vocab, denoisers=denoisers), seed)


def _restore(vocab, targets, loss_mask):
    """Test-side reading of an output example: (prefix, body restored from input + spans)."""
    targets, loss_mask = list(targets), list(loss_mask)
    assert targets[-1] == vocab.eos_id and loss_mask[-1] == 1
    cut = loss_mask.index(1)
    assert loss_mask[cut:] == [1] * (len(targets) - cut)  # the loss is on one contiguous tail
    context, tail = targets[:cut], targets[cut:-1]
    modality = vocab.modality_ids(context) if context else []
    prefix_len = next((i for i, m in enumerate(modality) if m != c.MODALITY_MARKER or vocab.is_sentinel(context[i])),
                      len(context))
    prefix, context = context[:prefix_len], context[prefix_len:]
    if not tail or not vocab.is_sentinel(tail[0]):  # prefix LM: no sentinels anywhere
        assert not vocab.is_sentinel(context + tail).any()
        return prefix, context + tail, None
    spans, order = {}, []
    for t in tail:
        if vocab.is_sentinel(t):
            assert t not in spans
            spans[t] = []
            order.append(t)
        else:
            spans[order[-1]].append(t)
    in_input = [t for t in context if vocab.is_sentinel(t)]
    assert in_input == order  # same sentinels, same order
    assert order == [vocab.sentinel_id(k) for k in range(len(order))]  # <extra_id_0>, <extra_id_1>, ...
    body = []
    for t in context:
        body += spans[t] if vocab.is_sentinel(t) else [t]
    return prefix, body, [len(spans[t]) for t in order]


# --- restoring the original ---------------------------------------------------------------------------
@pytest.mark.parametrize("length", [None, 64])
@pytest.mark.parametrize("denoisers", [None, sc.UL2_DENOISERS], ids=["t5", "ul2"])
def test_input_and_targets_restore_the_original(length, denoisers):
    records = _records([40, 0, 1, 2, 3, 120, 17, 300, 63, 5])
    outs = _corrupt(records, length, denoisers=denoisers)
    by_id = {}
    for o in outs:
        assert length is None or len(o["targets"]) <= length
        prefix, body, _ = _restore(VOCAB, o["targets"], o["loss_mask"])
        assert prefix == [VOCAB.speech_marker_id]  # repeated on every chunk
        by_id.setdefault(o["id"].decode(), []).extend(body)
        np.testing.assert_array_equal(o["modality"], VOCAB.modality_ids(o["targets"]))
    for r in records:  # chunks in order, nothing dropped, nothing re-ordered
        assert by_id[r["id"]] == VOCAB.units_to_ids(r["units"]).tolist(), r["id"]
    for o in outs:  # the library's reading (data show) agrees with the test's
        context, part = sc.split_example(o["targets"], o["loss_mask"])
        assert [VOCAB.speech_marker_id] + sc.restore_body(context[1:], part, lambda i: bool(VOCAB.is_sentinel(i))) == \
            [VOCAB.speech_marker_id] + _restore(VOCAB, o["targets"], o["loss_mask"])[1]


def test_chunks_fill_the_sequence_length_and_keep_the_split_away():
    """At L = 64 a 300-unit record becomes chunks whose corrupted form is at most 64 tokens, the
    largest body that fits (prefix 1 + n + 2 spans + EOS)."""
    outs = _corrupt(_records([300]), 64)
    table = sc.max_body_lengths(64, sc.T5_SPAN_CORRUPTION)
    n = int(table[64 - 1 - 1])
    assert n + 2 * t5_counts(n, 0.15, 3)[1] + 2 <= 64 < (n + 1) + 2 * t5_counts(n + 1, 0.15, 3)[1] + 2
    assert [len(o["targets"]) for o in outs[:-1]] == [n + 2 * t5_counts(n, 0.15, 3)[1] + 2] * (len(outs) - 1)
    assert sum(len(_restore(VOCAB, o["targets"], o["loss_mask"])[1]) for o in outs) == 300


def test_text_and_char_level_text_restore(tmp_path):
    words = "the cat sat on the mat and a dog ran far away le chat est sur le tapis".split()
    texts = [" ".join(words)] * 10
    for kind, size in (("word", 18), ("char", 23)):
        spm = train_sentencepiece(texts, str(tmp_path / kind), size, model_type=kind)
        vocab = SpeechTextVocabulary(spm, num_units=NUM_UNITS, langs=("en",), num_sentinels=20)
        records = [{"id": f"t{i}", "text": " ".join(words[i:i + 9])} for i in range(6)]
        ds = tf.data.Dataset.from_generator(lambda: iter(records), output_signature={
            "id": tf.TensorSpec([], tf.string), "text": tf.TensorSpec([], tf.string)})
        outs = _run(lambda: sc.span_corruption(interleave.text_only(ds, vocab), None, vocabulary=vocab))
        for o, r in zip(outs, records):
            prefix, body, spans = _restore(vocab, o["targets"], o["loss_mask"])
            assert prefix == [vocab.text_marker_id]
            assert vocab.decode(body) == r["text"] and body == vocab.encode_text(r["text"]) and spans
        if kind == "char":  # mSLAM's char-level text: one id per character (spaces as the piece '\u2581')
            assert len(body) >= len(records[-1]["text"].replace(" ", ""))


def test_interleaved_markers_stay_in_order():
    """A body with [Text]/[Speech] switches: markers are ordinary tokens, so the restored sequence
    has them where the modality changes."""
    v = VOCAB
    body = [v.unit_offset + i % NUM_UNITS for i in range(30)]
    body[10:10] = [v.text_marker_id, v.unk_id, v.unk_id, v.speech_marker_id]  # a text word (UNK: no SPM here)
    ex = {"id": tf.constant("mix"), "targets": tf.constant([v.speech_marker_id] + body + [v.eos_id], tf.int32),
          "modality": tf.constant(v.modality_ids([v.speech_marker_id] + body + [v.eos_id]), tf.int32),
          "loss_mask": tf.ones([len(body) + 2], tf.int32)}
    outs = _run(lambda: sc.span_corruption(tf.data.Dataset.from_tensors(ex).repeat(20), None, vocabulary=v,
                                           noise_density=0.5))
    for o in outs:
        prefix, restored, _ = _restore(v, o["targets"], o["loss_mask"])
        assert prefix == [v.speech_marker_id] and restored == body


# --- the rule, exactly and statistically ----------------------------------------------------------------
def _span_stats(outs):
    """Per output: (body length, noise tokens, span lengths, noise positions)."""
    rows = []
    for o in outs:
        _, body, spans = _restore(VOCAB, o["targets"], o["loss_mask"])
        context = [t for t in list(o["targets"])[1:list(o["loss_mask"]).index(1)]]
        positions, pos = [], 0
        for t in context:
            if VOCAB.is_sentinel(t):
                k = VOCAB.sentinel_offset + VOCAB.num_sentinels - 1 - t
                positions += list(range(pos, pos + spans[k]))
                pos += spans[k]
            else:
                pos += 1
        rows.append((len(body), sum(spans or []), spans or [], positions))
    return rows


def test_noise_counts_equal_t5_rule_for_every_length():
    lengths = list(range(0, 90)) + [150, 257, 499]
    outs = _corrupt(_records(lengths))
    for (n, noise, spans, _), length in zip(_span_stats(outs), lengths):
        assert n == length
        if length <= 1:
            assert noise == 0  # T5 cuts its 2-token mask [plain, noise] to 1 token
            continue
        assert (noise, len(spans)) == t5_counts(length, 0.15, 3.0), length
        assert all(s >= 1 for s in spans)


def _draw(length, draws, density=0.15, mean_span=3.0):
    outs = _corrupt(_records([length] * draws), denoisers=[sc.Denoiser("span", density, mean_span)])
    return _span_stats(outs)


def test_density_and_mean_span_match_settings_over_many_draws():
    """Over 600 examples of 100..400 tokens: noise share 0.15 and mean span 3 within sampling (and
    rounding) error."""
    rs = np.random.RandomState(3)
    outs = _corrupt(_records(rs.randint(100, 400, size=600).tolist()))
    rows = _span_stats(outs)
    tokens = sum(r[0] for r in rows)
    noise = sum(r[1] for r in rows)
    spans = [s for r in rows for s in r[2]]
    assert abs(noise / tokens - 0.15) < 0.005
    assert abs(np.mean(spans) - 3.0) < 0.1
    # the transcription gives the same figures
    py = [t5_noise_mask(r[0], 0.15, 3.0, random.Random(i)) for i, r in enumerate(rows)]
    assert sum(map(sum, py)) == noise


def _chi2_same(a, b):
    """p-value that two samples of small integers come from one distribution (chi-square on counts)."""
    top = max(max(a), max(b)) + 1
    ca, cb = np.bincount(a, minlength=top), np.bincount(b, minlength=top)
    keep = (ca + cb) > 0
    return stats.chi2_contingency(np.stack([ca[keep], cb[keep]]))[1]


def _python_spans(length, draws, density, mean_span, seed=0):
    rng = random.Random(seed)
    span_lengths, positions = [], []
    for _ in range(draws):
        mask = t5_noise_mask(length, density, mean_span, rng)
        positions += [i for i, m in enumerate(mask) if m]
        run = 0
        for m in mask + [False]:
            if m:
                run += 1
            elif run:
                span_lengths.append(run)
                run = 0
    return span_lengths, positions


@pytest.mark.parametrize("length,density,mean_span", [(60, 0.15, 3.0), (40, 0.5, 3.0), (120, 0.15, 8.0)])
def test_span_layout_distribution_matches_t5_transcription(length, density, mean_span):
    rows = _draw(length, 800, density, mean_span)
    tf_spans = [s for r in rows for s in r[2]]
    tf_positions = [p for r in rows for p in r[3]]
    py_spans, py_positions = _python_spans(length, 800, density, mean_span)
    assert _chi2_same(tf_spans, py_spans) > 1e-3
    assert _chi2_same(tf_positions, py_positions) > 1e-4
    # control: the test can fail -- a rule with the noise always at the end is rejected
    end_positions = [p for _ in range(800) for p in range(length - rows[0][1], length)]
    assert _chi2_same(tf_positions, end_positions) < 1e-6


def test_ul2_mixture_picks_denoisers_by_rate():
    denoisers = [sc.Denoiser("span", 0.15, 3.0, rate=3.0), sc.Denoiser("prefix_lm", 0.25, rate=1.0)]
    outs = _corrupt(_records([50] * 800), denoisers=denoisers)
    prefix_lm = sum(not VOCAB.is_sentinel(o["targets"]).any() for o in outs)
    assert stats.binomtest(prefix_lm, 800, 0.25).pvalue > 1e-3
    # the prefix-LM target share: t uniform in [1, 2 * round(0.25 * 50) - 1] = [1, 23], mean 12
    shares = [int(o["loss_mask"].sum()) - 1 for o in outs if not VOCAB.is_sentinel(o["targets"]).any()]
    assert min(shares) >= 1 and max(shares) <= 23
    assert stats.chisquare(np.bincount(shares, minlength=24)[1:]).pvalue > 1e-3


# --- loss weights -------------------------------------------------------------------------------------------
def test_loss_weights_are_zero_outside_the_targets():
    outs = _corrupt(_records([80, 30, 12]), 64)
    ds = tf.data.Dataset.from_generator(lambda: ({k: o[k] for k in ("targets", "modality", "loss_mask")}
                                                 for o in outs), output_signature={
        k: tf.TensorSpec([None], tf.int32) for k in ("targets", "modality", "loss_mask")})
    converted = SLMFeatureConverter(pack=True)(ds, {"targets": 128})
    rows = list(converted.as_numpy_iterator())
    total_weighted = 0
    for row in rows:
        w, tgt, seg = row[c.DECODER_LOSS_WEIGHTS], row[c.DECODER_TARGET_TOKENS], row[c.DECODER_SEGMENT_IDS]
        for s in set(seg[seg > 0].tolist()):
            ex_w, ex_t = w[seg == s], tgt[seg == s]
            cut = int(np.flatnonzero(ex_w)[0])
            assert not ex_w[:cut].any() and ex_w[cut:].all()
            assert VOCAB.is_sentinel(ex_t[cut]) and ex_t[-1] == VOCAB.eos_id  # targets start at <extra_id_0>
            total_weighted += int(ex_w.sum())
        assert not w[seg == 0].any()
    assert total_weighted == sum(int(o["loss_mask"].sum()) for o in outs)


# --- seeds, resume, batched == per-record ------------------------------------------------------------------
def test_same_seed_same_spans_other_seed_other_spans():
    records = _records([60] * 8)
    a, b, other = _corrupt(records, seed=7), _corrupt(records, seed=7), _corrupt(records, seed=8)
    assert [o["targets"].tolist() for o in a] == [o["targets"].tolist() for o in b]
    assert [o["targets"].tolist() for o in a] != [o["targets"].tolist() for o in other]


def test_batched_and_per_record_paths_agree():
    records = _records([40, 7, 0, 130, 64])
    ex = interleave.speech_only(_dataset(records), VOCAB, dedup=False)
    for length in (None, 48):
        lengths = {"targets": length} if length else None
        single = _run(lambda: sc.denoise(ex, lengths, vocabulary=VOCAB, denoisers=sc.UL2_DENOISERS))
        batched = _run(lambda: unbatch_records(sc.denoise_batches(ex.ragged_batch(256), lengths, vocabulary=VOCAB,
                                                                  denoisers=sc.UL2_DENOISERS)))
        assert len(single) == len(batched) >= len(records)
        for s, b in zip(single, batched):
            assert s.keys() == b.keys()
            for k in s:
                np.testing.assert_array_equal(s[k], b[k], err_msg=k)


@pytest.fixture()
def denoise_task(tmp_path):
    utts = [corpus.Utterance(id=f"u{i}", lang="en", units=np.random.RandomState(i).randint(0, NUM_UNITS, 90 + i)
                             .tolist(), unit_rate_hz=25.0) for i in range(24)]
    corpus.write_tfrecord_shards(str(tmp_path), "train", utts, 2)
    name = "test_span_corruption_units"
    registration.register_corpus_task(
        name, {"train": str(tmp_path / "train-*.tfrecord")},
        [functools.partial(interleave.speech_only_batches, vocabulary=VOCAB, dedup=False),
         functools.partial(sc.denoise_batches, vocabulary=VOCAB)],
        VOCAB, features=("id", "units"), batched=True)
    yield name
    seqio.TaskRegistry.remove(name)


def test_data_iterator_checkpoint_resumes_the_spans_exactly(denoise_task, tmp_path):
    cfg = DatasetConfig(mixture_or_task_name=denoise_task, sequence_length=64, batch_size=4, shuffle=True, pack=True)
    it = DataIterator.from_config(cfg)
    first = [next(it) for _ in range(3)]
    it.save(str(tmp_path / "iter" / "p0"))
    expected = [next(it) for _ in range(6)]  # past the first epoch: new spans for the same records
    assert not np.array_equal(first[0][c.DECODER_TARGET_TOKENS], expected[0][c.DECODER_TARGET_TOKENS])
    fresh = DataIterator.from_config(cfg)
    fresh.restore(str(tmp_path / "iter" / "p0"))
    for want in expected:
        got = next(fresh)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    weights = np.concatenate([b[c.DECODER_LOSS_WEIGHTS] for b in expected])
    assert 0 < weights.mean() < 0.5  # only the spans (and EOS) carry loss


def test_denoisers_come_from_gin(denoise_task):
    try:
        gin.parse_config("denoising.denoisers = [{'kind': 'prefix_lm', 'noise_density': 0.5}]")
        task = seqio.get_mixture_or_task(denoise_task)
        outs = list(task.get_dataset({"targets": 64}, split="train", shuffle=False, num_epochs=1).as_numpy_iterator())
        assert outs and not any(VOCAB.is_sentinel(o["targets"]).any() for o in outs)
        gin.clear_config()
        gin.parse_config_file("gin/data/ul2.gin")
        assert sc.denoising() == sc.UL2_DENOISERS
    finally:
        gin.clear_config()


# --- errors ------------------------------------------------------------------------------------------------
def test_too_few_sentinels_is_refused_before_reading():
    small = SpeechTextVocabulary(None, num_units=NUM_UNITS, num_sentinels=4)
    ds = interleave.speech_only(_dataset(_records([10])), small, dedup=False)
    with pytest.raises(ValueError, match=r"sequence length 512 .* spans .* 4 sentinels; give it num_sentinels >= "):
        sc.denoise(ds, {"targets": 512}, vocabulary=small)
    none = SpeechTextVocabulary(None, num_units=NUM_UNITS)
    with pytest.raises(ValueError, match="no sentinel ids"):
        sc.denoise(interleave.speech_only(_dataset(_records([10])), none), None, vocabulary=none)
    # without a length: the graph check names the shortage
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"example\(s\).*r0.*need.*20.*sentinels but the vocabulary "
                                                              r"has 4"):
        _corrupt(_records([400]), None, vocab=small)
    with pytest.raises(ValueError, match="no sentinel ids"):  # seqio extra ids are not sentinels
        extra = SpeechTextVocabulary(None, num_units=NUM_UNITS, extra_ids=10)
        sc.denoise(interleave.speech_only(_dataset(_records([10])), extra), None, vocabulary=extra)


def test_bad_denoiser_config_names_entry_and_field():
    with pytest.raises(ValueError, match=r"denoisers\[1\]: unknown field\(s\) \['density'\]"):
        sc.as_denoisers([{"kind": "span"}, {"density": 0.3}])
    with pytest.raises(ValueError, match=r"denoisers\[0\]: Denoiser.kind must be one of"):
        sc.as_denoisers([{"kind": "mlm"}])
    with pytest.raises(ValueError, match="noise_density must be < 1"):
        sc.Denoiser("span", 1.5)
    with pytest.raises(ValueError, match="rate must be a number > 0"):
        sc.Denoiser("span", rate=0)


def test_examples_with_prompts_or_extra_features_are_refused():
    v = VOCAB
    ex = {"id": tf.constant("p"), "targets": tf.constant([v.speech_marker_id, v.unit_offset, v.eos_id], tf.int32),
          "modality": tf.constant([3, 2, 3], tf.int32), "loss_mask": tf.constant([0, 1, 1], tf.int32)}
    with pytest.raises(tf.errors.InvalidArgumentError, match="loss mask with zeros"):
        _run(lambda: sc.span_corruption(tf.data.Dataset.from_tensors(ex), None, vocabulary=v))
    no_eos = dict(ex, loss_mask=tf.ones([3], tf.int32), targets=tf.constant([v.speech_marker_id, 5, 6], tf.int32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="do not end with EOS"):
        _run(lambda: sc.span_corruption(tf.data.Dataset.from_tensors(no_eos), None, vocabulary=v))
    with pytest.raises(ValueError, match=r"unsupported per-token features: \['patch_ids'\]"):
        sc.span_corruption(tf.data.Dataset.from_tensors(dict(ex, patch_ids=tf.constant([0, 0, 0]))), None,
                           vocabulary=v)


# --- the vocabulary ------------------------------------------------------------------------------------------
def test_sentinels_are_appended_and_render_as_t5_tags():
    plain = SpeechTextVocabulary(None, num_units=NUM_UNITS, langs=("en", "fr"))
    assert VOCAB.sentinel_offset == plain.vocab_size and VOCAB.vocab_size == plain.vocab_size + 100
    assert VOCAB.sentinel_id(0) == VOCAB.vocab_size - 1 and VOCAB.sentinel_id(99) == plain.vocab_size  # T5 order
    assert sentinel_block(VOCAB) == (plain.vocab_size, 100)
    spirit = SpeechTextVocabulary.spiritlm(None, num_sentinels=100)
    assert (spirit.unit_offset, spirit.style_offset + 99) == (32002, 32666)  # SpiritLM's ids unchanged
    assert (spirit.sentinel_id(99), spirit.sentinel_id(0)) == (32667, 32766)
    s = "[EN][Speech][Hu3]<extra_id_0>[Hu7]<extra_id_12>"
    ids = VOCAB.encode(s)
    assert ids[3] == VOCAB.sentinel_id(0) and ids[5] == VOCAB.sentinel_id(12)
    assert VOCAB.decode(ids) == s
    assert VOCAB.encode_tf(tf.constant(s)).numpy().tolist() == ids
    assert VOCAB.decode_tf(tf.constant(ids)).numpy().decode() == s
    assert (VOCAB.modality_ids(ids) == [3, 3, 2, 3, 2, 3]).all()
    with pytest.raises(ValueError, match=r"sentinel 100 is out of range \[0, 100\)"):
        VOCAB.encode("<extra_id_100>")


def test_demo_denoise_run_file_configures_ul2_and_the_mixture():
    """gin/runs/demo_denoise_cpu.gin: UL2's denoisers, the denoising mixture, a vocabulary that holds
    its token space (no corpus is read: the vocabulary size comes from the layout)."""
    from slm_jax import gin_utils
    from slm_jax.training.train import TrainRun
    try:
        gin_utils.parse_gin(["gin/runs/demo_denoise_cpu.gin"], [])
        run = TrainRun()
        assert sc.denoising() == sc.UL2_DENOISERS
        assert run.train_dataset.mixture_or_task_name == "spoken_demo_denoise_mix"
        import slm_jax_demo.tasks as demo
        size = demo.DemoCorpusParams.spm_vocab_size + 2 + demo.NUM_UNITS + len(demo.LANGS) + demo.DENOISE_SENTINELS
        assert size <= run.model.vocab_size < size + 128
        members = {t.name for t in seqio.get_mixture_or_task("spoken_demo_denoise_mix").tasks}
        assert {"spoken_demo_denoise_speech_en", "spoken_demo_denoise_text_fr", "spoken_demo_lm_crosslingual"} <= members
    finally:
        gin.clear_config()


def test_later_chunks_restate_the_markers_in_effect():
    """An interleaved body cut into chunks: each later chunk's prefix names the modality and the
    language in effect where it starts (left out when the chunk opens with its own marker of that
    kind); the bodies still restore the original in order."""
    v = VOCAB
    en, fr = v.lang_tag_id("en"), v.lang_tag_id("fr")
    speech = lambda k: [v.unit_offset + (3 * i) % NUM_UNITS for i in range(k)]  # noqa: E731
    body = speech(20) + [v.text_marker_id] + [v.unk_id] * 25 + [v.speech_marker_id, fr] + speech(30)
    targets = [en, v.speech_marker_id] + body + [v.eos_id]
    ex = {"id": tf.constant("mix"), "targets": tf.constant(targets, tf.int32),
          "modality": tf.constant(v.modality_ids(targets), tf.int32), "loss_mask": tf.ones([len(targets)], tf.int32),
          "lang": tf.constant("en")}
    kinds = ((v.text_marker_id, v.speech_marker_id), (en, fr))
    for length in (16, 26):  # at 26 (chunks of 23) a chunk opens with [Speech][FR]
        outs = _run(lambda: sc.denoise(tf.data.Dataset.from_tensors(ex), {"targets": length}, vocabulary=v,
                                       denoisers=[sc.Denoiser("prefix_lm", 0.25)]))
        restored, position, opened = [], 0, 0
        for o in outs:
            assert o["lang"] == b"en"  # other features are copied onto every chunk
            seq = list(o["targets"][:-1])
            run = next(i for i, t in enumerate(seq) if v.modality_ids([t])[0] != c.MODALITY_MARKER)
            own = next(k for k in range(len(body) - position) if v.modality_ids([body[position + k]])[0] !=
                       c.MODALITY_MARKER)  # the chunk's own leading markers
            restated, chunk = seq[:run - own], seq[run - own:]
            want = []
            for kind in (kinds[1], kinds[0]):  # the example's prefix order: [EN][Speech]
                if any(t in kind for t in body[position:position + own]):
                    continue
                want.append([t for t in targets[:2 + position] if t in kind][-1])
            assert restated == want, (length, position)
            opened += own > 0
            restored += chunk
            position += len(chunk)
        assert restored == body and len(outs) > 3
    assert opened  # the opening case was exercised


def test_per_record_denoising_registers_as_a_task(tmp_path):
    """`span_corruption.denoise` (per record) in a per-record task: the cache point goes before it
    (SeqIO runs length-dependent steps after it); the same chunks as the batched task. A cacheable
    batched task with it is refused at registration, naming it."""
    utts = [corpus.Utterance(id=f"u{i}", lang="en", units=np.random.RandomState(i).randint(0, NUM_UNITS, 70 + i)
                             .tolist(), unit_rate_hz=25.0) for i in range(6)]
    corpus.write_tfrecord_shards(str(tmp_path), "train", utts, 1)
    files = {"train": str(tmp_path / "train-*.tfrecord")}
    speech = functools.partial(interleave.speech_only, vocabulary=VOCAB, dedup=False)
    task = registration.register_corpus_task(
        "test_sc_per_record", files, [speech, functools.partial(sc.denoise, vocabulary=VOCAB)], VOCAB,
        features=("id", "units"))
    batched = registration.register_corpus_task(
        "test_sc_batched", files, [functools.partial(interleave.speech_only_batches, vocabulary=VOCAB, dedup=False),
                                   functools.partial(sc.denoise_batches, vocabulary=VOCAB)], VOCAB,
        features=("id", "units"), batched=True)
    try:
        names = [getattr(getattr(p, "func", p), "__name__", type(p).__name__) for p in task.preprocessors]
        assert names.index("CacheDatasetPlaceholder") < names.index("denoise")
        read = lambda t: [{k: np.asarray(v).tolist() for k, v in ex.items()} for ex in  # noqa: E731
                          t.get_dataset({"targets": 48}, split="train", shuffle=False, seed=5).as_numpy_iterator()]
        per_record = read(task)
        assert len(per_record) > len(utts) and all(len(ex["targets"]) <= 48 for ex in per_record)
        assert all(VOCAB.is_sentinel(ex["targets"]).any() for ex in per_record)
        bodies = lambda exs: [(ex["id"], _restore(VOCAB, ex["targets"], ex["loss_mask"])[1]) for ex in exs]  # noqa
        assert bodies(per_record) == bodies(read(batched))  # the same chunks (the draws follow each graph's seeds)
        with pytest.raises(ValueError, match=r"denoise_batches reads the sequence length.*cacheable=False"):
            registration.register_corpus_task(
                "test_sc_cacheable", files, [functools.partial(interleave.speech_only_batches, vocabulary=VOCAB),
                                             functools.partial(sc.denoise_batches, vocabulary=VOCAB)], VOCAB,
                features=("id", "units"), batched=True, cacheable=True)
    finally:
        for name in ("test_sc_per_record", "test_sc_batched"):
            seqio.TaskRegistry.remove(name)


def test_a_resume_compares_the_gin_denoisers(denoise_task):
    """The gin denoisers of a span-corruption member are part of the resume settings ('mixture'),
    so resuming a UL2 run with T5's rule (or the reverse) is refused like another mixture."""
    import types

    from slm_jax.training.optimizer import OptimizerConfig
    from slm_jax.training.train import resume_settings
    run = types.SimpleNamespace(train_dataset=DatasetConfig(mixture_or_task_name=denoise_task, sequence_length=64,
                                                            batch_size=4),
                                optimizer=OptimizerConfig(), train_steps=10, train_tokens=None)
    try:
        t5 = resume_settings(run)["mixture"]
        assert t5["denoisers"] == [dataclasses.asdict(d) for d in sc.T5_SPAN_CORRUPTION]
        gin.parse_config_file("gin/data/ul2.gin")
        assert len(resume_settings(run)["mixture"]["denoisers"]) == 7
    finally:
        gin.clear_config()
    plain = types.SimpleNamespace(**{**vars(run), "train_dataset": DatasetConfig(
        mixture_or_task_name="spoken_demo_speech_en", sequence_length=64, batch_size=4)})
    import slm_jax_demo.tasks  # noqa: F401 - registers the demo tasks (no I/O)
    assert "denoisers" not in resume_settings(plain)["mixture"]  # other runs' records are unchanged


def test_data_stats_counts_the_loss_tokens(denoise_task):
    from slm_jax.data import inspect_data
    row = inspect_data.stats(denoise_task, max_examples=12, sequence_length=64)[denoise_task]
    task = seqio.get_mixture_or_task(denoise_task)
    exs = list(task.get_dataset({"targets": 64}, split="train", shuffle=False, num_epochs=1).take(12)
               .as_numpy_iterator())
    assert row["loss_tokens"] == sum(int(ex["loss_mask"].sum()) for ex in exs) < row["tokens"]
