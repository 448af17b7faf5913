"""Packed tokens/s per CPU core of the SLM input pipelines against a plain SeqIO pipeline.

The plain reference is the simplest useful unit pipeline: TFRecord -> parse -> dedup
-> ids -> seqio DecoderFeatureConverter packing. The measured pipelines are slm_jax's
interleaving tasks/mixtures through `slm_jax.data.pipeline.get_dataset` (SLM feature
converter with modality ids). All run in one process, pinned to ONE core's worth of
TF threads, over the spoken demo corpus (built on first use).

    python bench/data_pipeline.py [--batches=200] [--sequence_length=1024]

Prints one line per pipeline and its ratio to the plain pipeline (target: >= 0.5).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PIPELINES = (
    "spoken_demo_speech_en",        # speech-only through the SLM path (dedup, markers, modality)
    "spoken_demo_crosslingual",     # sentence-level EN<->FR interleaving
    "spoken_demo_xl_mix",           # the demo's training mixture
    "spoken_demo_interleaved_en",   # word-level speech-text interleaving (SentencePiece)
    "spoken_demo_speech_text",      # SpiritLM-style 1/3 interleaved, speech, text
    "spoken_demo_denoise_speech_en",  # T5 span corruption over deduplicated units
    "spoken_demo_denoise_mix",      # denoising + plain LM + cross-lingual (T5's rule unless gin says otherwise)
)


def one_core():
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    options.autotune.enabled = False
    return options


def measure(ds, batches: int, warmup: int, key: str) -> dict:
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    tokens, start = 0, time.perf_counter()
    for _ in range(batches):
        batch = next(it)
        tokens += int((batch[key].numpy() > 0).sum())
    seconds = time.perf_counter() - start
    return {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds}


def plain_dataset(root: str, sequence_length: int, batch_size: int, options, converter=None):
    """The reference: a plain SeqIO task, nothing from slm_jax. TFExampleDataSource (one
    `parse_single_example` per record) -> run-length dedup and unit ids in one map -> seqio
    trims to length -> seqio.DecoderFeatureConverter packs (or `converter`, for the
    informational row that packs with slm_jax's converter)."""
    import seqio
    import tensorflow as tf

    from slm_jax_demo.corpus import DemoCorpusParams

    vocabulary = seqio.PassThroughVocabulary(DemoCorpusParams.num_units + 2, eos_id=1)

    @seqio.map_over_dataset
    def dedup_to_ids(ex):
        units = ex["units"]
        keep = tf.concat([tf.ones_like(units[:1], tf.bool), tf.not_equal(units[1:], units[:-1])], 0)
        return {"targets": tf.cast(tf.boolean_mask(units, keep) + 2, tf.int32)}

    name = "bench_plain_units"
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=seqio.TFExampleDataSource(
            {"train": os.path.join(root, "speech", "train-*.tfrecord")},
            {"id": tf.io.FixedLenFeature([], tf.string), "units": tf.io.RaggedFeature(tf.int64)},
        ),
        preprocessors=[dedup_to_ids, seqio.CacheDatasetPlaceholder()],
        output_features={"targets": seqio.Feature(vocabulary, add_eos=True, dtype=tf.int32)},
        metric_fns=[],
    )
    ds = seqio.get_dataset(name, {"targets": sequence_length}, dataset_split="train", shuffle=True,
                           num_epochs=None, seed=0,
                           feature_converter=converter or seqio.DecoderFeatureConverter(pack=True))
    return ds.batch(batch_size).with_options(options)


def slm_dataset(name: str, sequence_length: int, batch_size: int, options):
    from slm_jax.data.pipeline import DatasetConfig, get_dataset
    cfg = DatasetConfig(name, sequence_length=sequence_length, batch_size=batch_size, seed=0)
    return get_dataset(cfg).with_options(options)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--sequence_length", type=int, default=1024)
    p.add_argument("--pipelines", default=",".join(PIPELINES))
    args = p.parse_args(argv)

    options = one_core()
    import slm_jax_demo.tasks  # noqa: F401 - registers the measured tasks
    from slm_jax_demo.corpus import ensure_spoken_demo_corpus
    root = ensure_spoken_demo_corpus()
    print(f"# corpus {root}; batch {args.batch_size} x {args.sequence_length}; 1 core of TF threads", flush=True)

    def run_plain():
        return measure(plain_dataset(root, args.sequence_length, args.batch_size, options), args.batches,
                       args.warmup, "decoder_target_tokens")

    # The reference runs first AND last (machine load drifts); the ratio uses their mean.
    first = run_plain()
    print(json.dumps({"pipeline": "plain_seqio_dedup_pack (first)", **first}), flush=True)
    rows = []
    for name in args.pipelines.split(","):
        result = measure(slm_dataset(name, args.sequence_length, args.batch_size, options), args.batches,
                         args.warmup, "decoder_target_tokens")
        print(json.dumps({"pipeline": name, **result}), flush=True)
        rows.append((name, result))
    # Informational: the same plain task packed by slm_jax's vectorised converter, which
    # tells the packer's share of the gain apart from the tasks'.
    from slm_jax.data.feature_converter import SLMFeatureConverter
    plain_slm = measure(plain_dataset(root, args.sequence_length, args.batch_size, options,
                                      SLMFeatureConverter(pack=True)), args.batches, args.warmup,
                        "decoder_target_tokens")
    print(json.dumps({"pipeline": "plain task, slm_jax packing", **plain_slm}), flush=True)
    rows.append(("(plain task, slm_jax packing)", plain_slm))
    last = run_plain()
    print(json.dumps({"pipeline": "plain_seqio_dedup_pack (last)", **last}), flush=True)
    plain = {"tokens_per_second": (first["tokens_per_second"] + last["tokens_per_second"]) / 2}
    rows.insert(0, ("plain_seqio_dedup_pack (mean)", plain))
    print(f"\n{'pipeline':34s} {'tokens/s/core':>14s} {'vs plain':>9s}")
    for name, r in rows:
        print(f"{name:34s} {r['tokens_per_second']:14,.0f} {r['tokens_per_second'] / plain['tokens_per_second']:8.2f}x")


if __name__ == "__main__":
    main()
