"""`slm-jax data cache` throughput: records/s and units/s per worker of SeqIO's offline cache on the
Beam DirectRunner (one worker), from the difference of a small and a large corpus (so pipeline
start-up cancels), and the ratio to reading the same task live for one epoch (no cache). Ratios first.

    python bench/task_cache_throughput.py --small=2000 --large=20000

The corpus: slm_jax corpus TFRecords (4 shards), ~250 frames per record at 25 Hz (100 units with run
lengths 1-4); the task: `speech_only_batches` over 500 units, registered batched and cacheable.
Needs the `beam` extra.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def synth(root: str, n: int) -> int:
    """Writes n records in 4 shards under root; returns the frame-level units."""
    from slm_jax.data import corpus
    rng, utts, frames = random.Random(0), [], 0
    for i in range(n):
        units = [u for _ in range(100) for u in [rng.randrange(500)] * rng.randint(1, 4)]
        frames += len(units)
        utts.append(corpus.Utterance(id=f"utt{i:08d}", lang="en", units=units, unit_rate_hz=25.0))
    corpus.write_tfrecord_shards(root, "train", utts, 4)
    return frames


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", type=int, default=2000)
    p.add_argument("--large", type=int, default=20000)
    args = p.parse_args()

    from slm_jax.data import beam_cache, registration
    from slm_jax.data.preprocessors import interleave
    from slm_jax.data.tokenizers.spm import train_sentencepiece
    from slm_jax.data.tokenizers.token_space import SpeechTextVocabulary

    tmp = tempfile.mkdtemp(prefix="cache_bench_")
    spm = train_sentencepiece(["the cat sat on the mat"] * 20, os.path.join(tmp, "w"), 8, model_type="word")
    vocab = SpeechTextVocabulary(spm, num_units=500)
    rows = {}
    for n in (args.small, args.large):
        root = os.path.join(tmp, f"c{n}")
        frames = synth(root, n)
        name = f"bench_cache_{n}"
        task = registration.register_corpus_task(
            name, {"train": os.path.join(root, "train-*.tfrecord")},
            [functools.partial(interleave.speech_only_batches, vocabulary=vocab)], vocab, batched=True,
            cacheable=True)
        t0 = time.perf_counter()
        beam_cache.run_task_cache([name], os.path.join(tmp, "cache"), pipeline_args=["--direct_num_workers=1"])
        cache_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        live = sum(1 for _ in task.get_dataset({"targets": 1024}, split="train", shuffle=False, num_epochs=1))
        live_s = time.perf_counter() - t0
        rows[n] = dict(frames=frames, cache_s=cache_s, live_s=live_s, examples=live)
        print(f"{n:>8} records ({frames:,} units): cache {cache_s:.1f} s, live read {live_s:.1f} s")
    a, b = rows[args.small], rows[args.large]
    d_rec, d_units, d_cache, d_live = args.large - args.small, b["frames"] - a["frames"], b["cache_s"] - a["cache_s"], \
        b["live_s"] - a["live_s"]
    print(f"cache (DirectRunner, 1 worker), marginal: {d_rec / d_cache:,.0f} records/s, {d_units / d_cache / 1e6:.2f}M "
          f"units/s; pipeline start-up ~{a['cache_s'] - args.small * d_cache / d_rec:.1f} s")
    print(f"live read, one epoch, marginal: {d_rec / d_live:,.0f} records/s; cache / live read time: "
          f"{d_cache / d_live:.2f}x")


if __name__ == "__main__":
    main()
