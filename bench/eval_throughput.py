"""Pair-benchmark scoring throughput: batched, bucketed, sharded scorer vs a per-example loop.

Scores synthetic spoken-cloze pairs (a speech prompt + two endings, random units, lengths
spread around the given means like the demo's sSC) with a gin model config and random
parameters, two ways, in one run on the same devices:

  slm_jax    `LikelihoodScorer`: sequences sorted into length buckets, `--batch_size` rows per
             jitted call, rows sharded over the mesh's data axes (the Trainer's shardings)
  loop       one un-batched jitted call per side, each at its exact length (what a plain
             evaluation script does)

Both are timed after a first pass that compiles every shape they need: the figure is
pairs scored per second (best of `--repeats` warm passes) and the ratio; the first pass's
time (compiles included: a bucket per shape vs one program per distinct length) is
printed too, since a fresh evaluation process pays it every time.

    python bench/eval_throughput.py                                   # 1B (gin/models/1b.gin), a GPU
    python bench/eval_throughput.py --gin_file=gin/models/tiny.gin --pairs=64   # CPU
"""
from __future__ import annotations

import argparse
import functools
import json
import pathlib
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gin_file", default="gin/models/1b.gin", help="a gin/models/*.gin size")
    p.add_argument("--gin", action="append", default=[], help="extra binding, e.g. DecoderConfig.dtype='float32'")
    p.add_argument("--pairs", type=int, default=256, help="pairs per timed pass")
    p.add_argument("--prompt_units", type=int, default=500, help="mean frame-level units of a prompt (~250 tokens)")
    p.add_argument("--ending_units", type=int, default=120, help="mean frame-level units of an ending")
    p.add_argument("--batch_size", type=int, default=32, help="rows per scoring call")
    p.add_argument("--mesh", default="1,-1,1", help="data,fsdp,tensor sizes (-1 fills)")
    p.add_argument("--repeats", type=int, default=2, help="timed passes (the best is reported)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="append JSON lines here too")
    return p.parse_args(argv)


def load_model_config(gin_file, bindings):
    import gin
    from slm_jax.models.decoder import DecoderConfig
    gin.clear_config()
    path = pathlib.Path(gin_file)
    gin.parse_config_files_and_bindings([str(path if path.is_file() else REPO / gin_file)], bindings,
                                        finalize_config=False)
    return DecoderConfig()


def synthetic_pairs(n, vocab_units, prompt_units, ending_units, seed):
    """Pairs of speech units with a units-to-tokens ratio like real speech (runs of repeats)."""
    from slm_jax.evaluation.cloze import ClozePair
    from slm_jax.evaluation.sequences import Segment
    rng = np.random.default_rng(seed)

    def utterance(mean):
        runs = max(2, int(rng.normal(mean / 2, mean / 8)))
        return Segment.speech(np.repeat(rng.integers(0, vocab_units, runs), rng.integers(1, 4, runs)), "en")

    return [ClozePair(f"p{i}", (utterance(prompt_units),), (utterance(ending_units),), (utterance(ending_units),))
            for i in range(n)]


@functools.lru_cache(maxsize=None)
def _loop_fn(model):
    import jax

    @jax.jit
    def total_logp(params, inputs, targets):
        logits = model.apply({"params": params}, inputs).logits
        logp = jax.nn.log_softmax(logits[0], axis=-1)
        return logp[np.arange(targets.shape[1]), targets[0]].sum()

    return total_logp


def loop_pass(model, params, seqs):
    """One jitted, un-batched call per sequence; returns the log-likelihoods."""
    from slm_jax.evaluation.sequences import model_inputs
    fn = _loop_fn(model)
    out = [fn(params, model_inputs(s.ids)[None], s.ids[None]) for s in seqs]
    return np.asarray([float(x) for x in out])


def timed(fn, repeats):
    best = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        elapsed = time.perf_counter() - start
        best = elapsed if best is None else min(best, elapsed)
    return best, result


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax
    from slm_jax.data.tokenizers.token_space import SpeechTextVocabulary
    from slm_jax.evaluation import cloze
    from slm_jax.evaluation.likelihood import SUM_ALL, LikelihoodScorer
    from slm_jax.evaluation.runner import ModelRunner
    from slm_jax.evaluation.sequences import SequenceFormat, modality_of_ids
    from slm_jax.training.optimizer import OptimizerConfig
    from slm_jax.training.partitioning import DEFAULT_RULES, MeshConfig, make_mesh
    from slm_jax.training.trainer import TrainConfig, Trainer

    cfg = load_model_config(args.gin_file, args.gin)
    num_units = min(500, cfg.vocab_size - 5)  # [Speech] marker + PAD/EOS/UNK + units fit the embedding
    vocab = SpeechTextVocabulary(None, num_units=num_units)
    data, fsdp, tensor = (int(x) for x in args.mesh.split(","))
    trainer = Trainer(cfg, OptimizerConfig(), TrainConfig(), make_mesh(MeshConfig(data, fsdp, tensor)),
                      DEFAULT_RULES, 10, args.batch_size, 128)
    runner = ModelRunner.from_trainer(trainer, trainer.init_state(args.seed)["params"])
    pairs = synthetic_pairs(args.pairs, num_units, args.prompt_units, args.ending_units, args.seed)
    seqs = cloze.encode_pairs(pairs, SequenceFormat(vocab))
    scorer = LikelihoodScorer(runner, modality_of_ids(vocab, cfg.vocab_size), batch_size=args.batch_size)

    batched_first, _ = timed(lambda: scorer(seqs), 1)  # compiles every length bucket
    batched_s, sums = timed(lambda: scorer(seqs), args.repeats)
    loop_first, _ = timed(lambda: loop_pass(runner.model, runner.params, seqs), 1)  # every distinct length
    loop_s, loop_logp = timed(lambda: loop_pass(runner.model, runner.params, seqs), args.repeats)

    lengths = [len(s.ids) for s in seqs]
    max_diff = float(np.abs(sums[:, SUM_ALL] - loop_logp).max() / np.abs(loop_logp).max())
    common = {"gin_file": args.gin_file, "device": jax.devices()[0].device_kind, "devices": jax.device_count(),
              "pairs": args.pairs, "mean_tokens": float(np.mean(lengths)), "dtype": cfg.dtype}
    rows = [{"system": "slm_jax (batched, bucketed, sharded)", "pairs_per_s": args.pairs / batched_s,
             "first_pass_s": batched_first, "batch_size": scorer.batch_size, **common},
            {"system": "loop (one jitted call per side)", "pairs_per_s": args.pairs / loop_s,
             "first_pass_s": loop_first, "distinct_lengths": len(set(lengths)), **common}]
    for row in rows:
        print(json.dumps(row))
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    print(f"slm_jax {rows[0]['pairs_per_s']:,.1f} pairs/s vs loop {rows[1]['pairs_per_s']:,.1f} pairs/s: "
          f"{rows[0]['pairs_per_s'] / rows[1]['pairs_per_s']:.2f}x warm; first pass (with compiles) "
          f"{batched_first:.1f} s vs {loop_first:.1f} s: {loop_first / batched_first:.2f}x (log-likelihoods agree to "
          f"{max_diff:.1e} relative; {len(set(lengths))} distinct lengths, mean {np.mean(lengths):.0f} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
