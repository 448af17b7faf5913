"""The spoken demo corpus end to end: espeak-ng -> units -> corpus, paired records, cloze
pairs (from separate benchmark stories), SentencePiece; its SeqIO tasks produce packed
batches a model can train on."""
import json
import os
import shutil

import numpy as np
import pytest

pytestmark = [pytest.mark.espeak,
              pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                 reason="espeak-ng not installed (apt-get install -y espeak-ng)")]

SMALL = dict(num_stories=12, num_units=32, spm_vocab_size=120, voices_per_lang=2, seed=3, num_benchmark_stories=6)
CLOZE_NAMES = sorted(f"{b}_{p}" for b in ("ssc", "stc") for p in ("en", "fr", "en_fr", "fr_en"))


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    from slm_jax_demo.corpus import DemoCorpusParams, ensure_spoken_demo_corpus
    return ensure_spoken_demo_corpus(str(tmp_path_factory.mktemp("spoken")), DemoCorpusParams(**SMALL))


@pytest.mark.slow
def test_corpus_records_have_aligned_speech_and_text(small_corpus):
    from slm_jax.data import corpus
    utts = list(corpus.iter_utterances(os.path.join(small_corpus, "speech", "train-*.tfrecord")))
    heldout = list(corpus.iter_utterances(os.path.join(small_corpus, "speech", "validation-*.tfrecord")))
    assert len(utts) + len(heldout) == 2 * SMALL["num_stories"]
    assert heldout, "held-out stories feed the cloze benchmarks"
    for utt in utts:
        corpus.validate(utt, num_units=SMALL["num_units"], source="speech")
        assert utt.unit_rate_hz == 25.0 and utt.parallel_id and utt.text
        assert len(utt.sentences) in (4, 5)
        # words are inside their sentences, sentences cover the words in order
        for (start, end, _) in utt.sentences:
            assert any(start <= ws and we <= end + 1e-6 for _, ws, we in utt.words)
        assert utt.words[-1][2] <= utt.duration_s + 1.0 / utt.unit_rate_hz


def test_paired_records_and_spm(small_corpus):
    from slm_jax.data import corpus
    paired = list(corpus.read_paired_tfrecord(os.path.join(small_corpus, "paired", "train-*.tfrecord")))
    assert paired and all(p["a_lang"] == "en" and p["b_lang"] == "fr" for p in paired)
    assert all(len(p["a_sentence_start"]) == len(p["b_sentence_start"]) for p in paired)
    assert os.path.isfile(os.path.join(small_corpus, "spm.model"))


def _cloze(root, name):
    with open(os.path.join(root, "cloze", f"{name}.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_cloze_pairs_cover_languages_and_directions(small_corpus):
    names = sorted(f[:-len(".jsonl")] for f in os.listdir(os.path.join(small_corpus, "cloze")))
    assert names == CLOZE_NAMES
    items = _cloze(small_corpus, "stc_en_fr")
    assert items
    for item in items:
        assert item["prompt"]["lang"] == "en" and item["correct"]["lang"] == "fr" == item["wrong"]["lang"]
        assert item["prompt"]["units"] and item["correct"]["units"] and item["wrong"]["units"]
        assert item["correct"]["text"] != item["wrong"]["text"]


def test_cloze_files_hold_the_benchmark_stories(small_corpus):
    """Every file: one pair per benchmark story (unique ids, the same in every file); a side
    spoken in one language is the same wherever it occurs; no prompt is a corpus story's."""
    from slm_jax_demo.corpus import BENCHMARK_REPORT, _joined
    from slm_jax_demo.stories import generate_stories

    files = {name: _cloze(small_corpus, name) for name in CLOZE_NAMES}
    ids = [item["id"] for item in files["ssc_en"]]
    assert len(ids) == len(set(ids)) == SMALL["num_benchmark_stories"]
    assert all([item["id"] for item in items] == ids for items in files.values())
    for kind in ("ssc", "stc"):
        for prompt_lang, ending_lang in (("en", "fr"), ("fr", "en")):
            cross = files[f"{kind}_{prompt_lang}_{ending_lang}"]
            assert [x["prompt"] for x in cross] == [x["prompt"] for x in files[f"{kind}_{prompt_lang}"]]
            assert [x["correct"] for x in cross] == [x["correct"] for x in files[f"ssc_{ending_lang}"]]
            assert [x["wrong"] for x in cross] == [x["wrong"] for x in files[f"{kind}_{ending_lang}"]]
    corpus_prompts = {(lang, _joined(s.sentences(lang)[:-1])) for s in generate_stories(SMALL["num_stories"],
                                                                                       SMALL["seed"])
                      for lang in ("en", "fr")}
    assert not {(x["prompt"]["lang"], x["prompt"]["text"]) for items in files.values() for x in items} & corpus_prompts
    with open(os.path.join(small_corpus, BENCHMARK_REPORT)) as f:
        report = json.load(f)
    assert report["num_stories"] == SMALL["num_benchmark_stories"] <= report["candidates"]


@pytest.mark.slow
def test_build_is_deterministic_and_its_splits_ignore_the_benchmark(small_corpus, tmp_path):
    """A build with another benchmark size has the same train and validation records (and units)."""
    import dataclasses

    import sentencepiece

    from slm_jax.data import corpus
    from slm_jax_demo.corpus import DemoCorpusParams, ensure_spoken_demo_corpus
    again = ensure_spoken_demo_corpus(str(tmp_path), DemoCorpusParams(**{**SMALL, "num_benchmark_stories": 2}))
    assert len(_cloze(again, "stc_fr_en")) == 2
    spms = [sentencepiece.SentencePieceProcessor(model_file=os.path.join(root, "spm.model"))
            for root in (small_corpus, again)]
    assert [[p.id_to_piece(i) for i in range(p.get_piece_size())] for p in spms] == [
        [p.id_to_piece(i) for i in range(p.get_piece_size())] for p in reversed(spms)]
    np.testing.assert_array_equal(np.load(os.path.join(small_corpus, "centroids.npy")),
                                  np.load(os.path.join(again, "centroids.npy")))
    for split in ("train", "validation"):
        for lang in ("en", "fr"):
            pattern = os.path.join("speech", f"{split}-{lang}-*.tfrecord")
            # word_token_model is the sha256 of spm.model, whose trainer_spec records the build's
            # temp path; the SentencePiece pieces (hence every word_token_ids) are compared instead.
            a, b = ([{**dataclasses.asdict(u), "word_token_model": None} for u in
                     corpus.iter_utterances(os.path.join(root, pattern))] for root in (small_corpus, again))
            assert a and a == b
        pattern = os.path.join("paired", f"{split}-*.tfrecord")
        assert list(corpus.read_paired_tfrecord(os.path.join(small_corpus, pattern))) == list(
            corpus.read_paired_tfrecord(os.path.join(again, pattern)))


def test_spoken_tasks_give_packed_batches(small_corpus, monkeypatch):
    import slm_jax_demo.tasks as spoken_tasks
    from slm_jax.data.pipeline import DataIterator, DatasetConfig, get_dataset
    from slm_jax.data.registration import LazyRootFiles

    # Point the registered tasks at the small corpus (their vocab has NUM_UNITS units).
    monkeypatch.setattr(LazyRootFiles, "_resolved",
                        lambda self, split: os.path.join(small_corpus, self._split_to_filepattern[split]))
    if SMALL["num_units"] > spoken_tasks.NUM_UNITS:
        pytest.skip("small corpus has more units than the registered vocabulary")
    cfg = DatasetConfig("spoken_demo_xl_mix", sequence_length=256, batch_size=2, seed=0)
    batch = next(DataIterator(get_dataset(cfg)))
    assert batch["decoder_target_tokens"].shape == (2, 256)
    speech = batch["decoder_modality"] == 2
    assert speech.sum() > 0.8 * (batch["decoder_target_tokens"] > 0).sum()
    vocab = spoken_tasks.SPEECH_VOCAB
    units = batch["decoder_target_tokens"][speech] - vocab.unit_offset
    assert units.min() >= 0 and units.max() < SMALL["num_units"]
    assert np.all(batch["decoder_segment_ids"][batch["decoder_target_tokens"] > 0] > 0)


@pytest.mark.slow
def test_pretokenized_words_equal_in_graph_sentencepiece(small_corpus):
    """The corpus's per-word SentencePiece ids give exactly the in-graph tokenizer's output."""
    import functools

    import seqio
    import tensorflow as tf

    from slm_jax.data import corpus

    from slm_jax.data.preprocessors import word_interleave
    from slm_jax.data.tokenizers.token_space import SpeechTextVocabulary

    vocab = SpeechTextVocabulary(os.path.join(small_corpus, "spm.model"), num_units=SMALL["num_units"])
    files = tf.io.gfile.glob(os.path.join(small_corpus, "speech", "train-en-*.tfrecord"))
    with_tokens = ("id", "units", "unit_rate_hz", "word_text", "word_start", "word_end",
                   "word_token_ids", "word_token_lengths", "word_token_model")

    def targets(keys):
        desc = {k: corpus.TFRECORD_FEATURES[k] for k in keys}
        ds = tf.data.TFRecordDataset(files).map(lambda r: tf.io.parse_single_example(r, desc))
        fn = functools.partial(word_interleave.word_interleave, vocabulary=vocab, policy="random", speech_ratio=0.5)
        with seqio.utils.map_seed_manager(7):
            return [ex["targets"].tolist() for ex in fn(ds).as_numpy_iterator()]

    pretokenized, in_graph = targets(with_tokens), targets(with_tokens[:6])
    assert pretokenized == in_graph
    assert any(vocab.text_marker_id in t for t in pretokenized)  # text spans really were exercised


def test_pretokenized_words_from_another_model_are_refused(small_corpus):
    import tensorflow as tf

    from slm_jax.data import corpus

    from slm_jax.data.preprocessors import word_interleave
    from slm_jax.data.tokenizers.token_space import SpeechTextVocabulary

    other = SpeechTextVocabulary(os.path.join(small_corpus, "spm.model"), num_units=SMALL["num_units"])
    other._model_digest = "0" * 64  # a vocabulary whose model is not the corpus's
    files = tf.io.gfile.glob(os.path.join(small_corpus, "speech", "train-en-*.tfrecord"))
    ds = tf.data.TFRecordDataset(files).map(lambda r: tf.io.parse_single_example(r, corpus.TFRECORD_FEATURES))
    with pytest.raises(tf.errors.InvalidArgumentError, match="word_token_ids .* SentencePiece model"):
        next(word_interleave.word_interleave(ds, vocabulary=other).as_numpy_iterator())


@pytest.mark.slow
def test_tiny_lst_trains_on_the_demo_corpus(small_corpus, monkeypatch):
    """LST (static patches of 4 units) on the cross-lingual demo mixture: the loss falls."""
    import jax

    import slm_jax_demo.tasks as spoken_tasks
    from slm_jax.data.pipeline import DataIterator, DatasetConfig, get_dataset
    from slm_jax.data.registration import LazyRootFiles
    from slm_jax.models.decoder import DecoderConfig
    from slm_jax.models.lst import LSTConfig
    from slm_jax.training import partitioning
    from slm_jax.training.optimizer import OptimizerConfig
    from slm_jax.training.trainer import TrainConfig, Trainer

    monkeypatch.setattr(LazyRootFiles, "_resolved",
                        lambda self, split: os.path.join(small_corpus, self._split_to_filepattern[split]))
    data = DataIterator(get_dataset(DatasetConfig("spoken_demo_xl_mix", sequence_length=128, batch_size=8, seed=0)))
    cfg = LSTConfig(global_model=DecoderConfig(vocab_size=spoken_tasks.SPEECH_VOCAB.vocab_size, embed_dim=64,
                                               mlp_dim=128, num_layers=2, num_heads=4, num_kv_heads=2),
                    local_embed_dim=64, local_mlp_dim=128, local_num_heads=4, patch_size=4, pooling_impl="auto")
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), partitioning.MESH_AXES)
    trainer = Trainer(cfg, OptimizerConfig(learning_rate=3e-3, warmup_steps=5), TrainConfig(), mesh,
                      partitioning.DEFAULT_RULES, total_steps=60, batch_size=8, sequence_length=128)
    state, losses = trainer.init_state(0), []
    for _ in range(60):
        state, metrics = trainer.train_step(state, trainer.global_batch(next(data)))
        losses.append(float(metrics["loss"]))
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:5]), losses
    assert float(metrics["uncovered_tokens"]) == 0.0


@pytest.mark.slow
def test_denoising_mixture_trains_on_the_demo_corpus(small_corpus, monkeypatch):
    """`spoken_demo_denoise_mix` under UL2's denoisers (gin/data/ul2.gin), as gin/runs/demo_denoise_cpu.gin
    trains it: batches hold sentinels, the loss is on the spans, and the loss falls."""
    import gin
    import jax

    import slm_jax_demo.tasks as spoken_tasks
    from slm_jax import contract
    from slm_jax.data.pipeline import DataIterator, DatasetConfig, get_dataset
    from slm_jax.data.preprocessors import span_corruption
    from slm_jax.data.registration import LazyRootFiles
    from slm_jax.data.tokenizers.token_space import SpeechTextVocabulary
    from slm_jax.models.decoder import DecoderConfig
    from slm_jax.training import partitioning
    from slm_jax.training.optimizer import OptimizerConfig
    from slm_jax.training.trainer import TrainConfig, Trainer

    monkeypatch.setattr(LazyRootFiles, "_resolved",
                        lambda self, split: os.path.join(small_corpus, self._split_to_filepattern[split]))
    vocab = SpeechTextVocabulary(os.path.join(small_corpus, "spm.model"), num_units=spoken_tasks.NUM_UNITS,
                                 langs=spoken_tasks.LANGS, num_sentinels=spoken_tasks.DENOISE_SENTINELS)
    monkeypatch.setattr(spoken_tasks.DENOISE_VOCAB, "_real", vocab)
    gin.clear_config()
    try:
        gin.parse_config_file(os.path.join(os.path.dirname(__file__), "..", "gin", "data", "ul2.gin"))
        assert span_corruption.denoising() == span_corruption.UL2_DENOISERS
        data = DataIterator(get_dataset(DatasetConfig("spoken_demo_denoise_mix", sequence_length=128, batch_size=8,
                                                      seed=0)))
        batches = [next(data) for _ in range(60)]
    finally:
        gin.clear_config()
    tokens = np.concatenate([b[contract.DECODER_TARGET_TOKENS] for b in batches])
    weights = np.concatenate([b[contract.DECODER_LOSS_WEIGHTS] for b in batches])
    assert vocab.is_sentinel(tokens).any() and 0.2 < weights[tokens > 0].mean() < 0.95
    cfg = DecoderConfig(vocab_size=384, embed_dim=64, mlp_dim=128, num_layers=2, num_heads=4, num_kv_heads=2)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), partitioning.MESH_AXES)
    trainer = Trainer(cfg, OptimizerConfig(learning_rate=3e-3, warmup_steps=5), TrainConfig(), mesh,
                      partitioning.DEFAULT_RULES, total_steps=60, batch_size=8, sequence_length=128)
    state, losses = trainer.init_state(0), []
    for batch in batches:
        state, metrics = trainer.train_step(state, trainer.global_batch(batch))
        losses.append(float(metrics["loss"]))
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:5]), losses


@pytest.mark.parametrize("kind", ["word_interleave", "speech_only", "text_only"])
@pytest.mark.slow
def test_batched_task_gives_the_per_record_chains_examples(small_corpus, kind):
    """`register_corpus_task(batched=True)` (batched parse -> preprocess -> split, one unbatch)
    yields exactly the examples of the per-record chain, for the same seed."""
    import functools

    import slm_jax_demo.tasks as spoken_tasks
    from slm_jax.data.preprocessors import interleave
    from slm_jax.data.preprocessors import word_interleave
    from slm_jax.data.registration import register_corpus_task
    from slm_jax.data.tokenizers.token_space import SpeechTextVocabulary

    vocab = SpeechTextVocabulary(os.path.join(small_corpus, "spm.model"), num_units=SMALL["num_units"],
                                 langs=("en", "fr"))
    per_record_fn, batched_fn, fields = {
        "word_interleave": (functools.partial(word_interleave.word_interleave, batch_records=4),
                            word_interleave.word_interleave_batches, spoken_tasks.WORD_FIELDS),
        "speech_only": (interleave.speech_only, interleave.speech_only_batches, spoken_tasks.SPEECH_FIELDS),
        "text_only": (interleave.text_only, interleave.text_only_batches, spoken_tasks.TEXT_FIELDS),
    }[kind]
    files = {"train": os.path.join(small_corpus, "speech", "train-*.tfrecord")}
    per_record = register_corpus_task(f"test_{kind}_per_record", files,
                                      [functools.partial(per_record_fn, vocabulary=vocab)], vocab, features=fields)
    batched = register_corpus_task(f"test_{kind}_batched", files, [functools.partial(batched_fn, vocabulary=vocab)],
                                   vocab, features=fields, batched=True, batch_records=4)

    def examples(task):
        ds = task.get_dataset({"targets": 40}, split="train", shuffle=False, seed=7)
        return [{k: np.asarray(v).tolist() for k, v in ex.items()} for ex in ds.as_numpy_iterator()]

    expected = examples(per_record)
    assert len(expected) > 2 * SMALL["num_stories"]  # records were split at 40 tokens
    assert examples(batched) == expected


@pytest.mark.parametrize("lang_tags", [False, True])
@pytest.mark.slow
def test_batched_crosslingual_matches_the_per_record_map(small_corpus, lang_tags):
    """`crosslingual_interleave_batches`: with a fixed start and strict alternation, exactly the
    per-record examples; with a random start, each example is the a-first or the b-first one."""
    import functools

    from slm_jax.data import corpus

    from slm_jax.data.preprocessors import interleave
    from slm_jax.data.registration import register_corpus_task

    from slm_jax.data.tokenizers.token_space import SpeechTextVocabulary

    vocab = SpeechTextVocabulary(None, num_units=SMALL["num_units"], langs=("en", "fr"))
    files = {"train": os.path.join(small_corpus, "paired", "train-*.tfrecord")}

    def examples(fn, batched, **kwargs):
        name = f"test_xl_{fn.__name__}_{lang_tags}_{'_'.join(map(str, kwargs.values()))}"
        task = register_corpus_task(name, files, [functools.partial(fn, vocabulary=vocab, lang_tags=lang_tags,
                                                                    **kwargs)],
                                    vocab, feature_description=corpus.PAIRED_TFRECORD_FEATURES,
                                    batched=batched, batch_records=3)
        ds = task.get_dataset({"targets": 100000}, split="train", shuffle=False, seed=5)
        return [np.asarray(ex["targets"]).tolist() for ex in ds.as_numpy_iterator()]

    by_start = {}
    for start in ("a", "b"):
        by_start[start] = examples(interleave.crosslingual_interleave, False, start=start)
        assert examples(interleave.crosslingual_interleave_batches, True, start=start) == by_start[start]
    mixed = examples(interleave.crosslingual_interleave_batches, True, start="random")
    assert len(mixed) == len(by_start["a"]) > 3
    assert all(m in (a, b) for m, a, b in zip(mixed, by_start["a"], by_start["b"]))
    assert {m == a for m, a in zip(mixed, by_start["a"])} == {True, False}  # both starts occur
