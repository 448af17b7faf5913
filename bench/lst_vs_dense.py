"""Speech units per second: LST (static patches) against the dense decoder of the same
global size, both through slm_jax's real jitted train step, measured in one run.

Synthetic speech batches (no tensorflow/seqio): each packed segment is `[Speech]`
followed by units, so every unit is a speech token and LST pools `patch_size` of them
per global position. The LST's global length is seq_len / patch_size plus one slot per
segment for the BOS and the marker (rounded up to a multiple of 128).

    python bench/lst_vs_dense.py --gin_file=gin/models/lst_1b.gin --seq_len=8192 --batch_size=2   # H100
    python bench/lst_vs_dense.py --gin_file=gin/models/lst_tiny.gin --seq_len=256 --steps=3        # CPU smoke
    python bench/lst_vs_dense.py --gin_file=gin/models/lst_1b.gin --seq_len=8192 --attention_impl=xla,flash_gpu

Prints one JSON line per model and the LST/dense ratio of units per second (target >= 2.5x).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import statistics
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from slm_jax import contract  # noqa: E402  (after the sys.path line; imports nothing heavy)

SPEECH, MARKER = contract.MODALITY_SPEECH, contract.MODALITY_MARKER


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gin_file", default="gin/models/lst_tiny.gin", help="a gin/models/lst_*.gin size")
    p.add_argument("--gin", action="append", default=[], help="extra binding, e.g. LSTConfig.patch_size=2")
    p.add_argument("--batch_size", type=int, default=2)
    p.add_argument("--seq_len", type=int, default=8192)
    p.add_argument("--segments", type=int, default=2, help="packed utterances per row")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--mesh", default="1,-1,1", help="data,fsdp,tensor sizes (-1 fills)")
    p.add_argument("--attention_impl", default=None,
                   help="comma-separated DecoderConfig.attention_impl values (global and local stacks); "
                        "dense and LST run once per value (default: the config's)")
    return p.parse_args(argv)


def speech_batch(rng, batch, length, vocab, segments):
    """Packed rows of `[Speech] u u u ...` utterances; modality per target token."""
    tokens = rng.integers(4, vocab, (batch, length)).astype(np.int32)
    seg = np.zeros((batch, length), np.int32)
    pos = np.zeros((batch, length), np.int32)
    modality = np.full((batch, length), SPEECH, np.int32)
    bounds = np.linspace(0, length, segments + 1).astype(int)
    for s, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]), start=1):
        seg[:, a:b], pos[:, a:b] = s, np.arange(b - a)
        tokens[:, a], modality[:, a] = 1, MARKER  # the [Speech] marker opens each utterance
    inputs = np.where(pos == 0, 0, np.roll(tokens, 1, axis=1))
    return {contract.DECODER_INPUT_TOKENS: inputs, contract.DECODER_TARGET_TOKENS: tokens,
            contract.DECODER_LOSS_WEIGHTS: np.ones((batch, length), np.int32), contract.DECODER_MODALITY: modality,
            contract.DECODER_SEGMENT_IDS: seg, contract.DECODER_POSITIONS: pos}


def load_lst_config(gin_file, bindings):
    import gin

    from slm_jax.models.lst import LSTConfig
    gin.clear_config()
    gin.add_config_file_search_path(str(REPO / "gin"))  # for the `include 'models/...'` lines
    path = pathlib.Path(gin_file)
    gin.parse_config_files_and_bindings([str(path if path.is_file() else REPO / gin_file)], bindings,
                                        finalize_config=False)
    return LSTConfig()


def time_steps(trainer, batch, steps, warmup):
    import jax
    state = trainer.init_state(0)
    gbatch = trainer.global_batch(batch)
    for _ in range(warmup):
        state, metrics = trainer.train_step(state, gbatch)
    jax.block_until_ready(metrics["loss"])
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = trainer.train_step(state, gbatch)
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - start)
    return statistics.median(times), metrics


def main(argv=None):
    args = parse_args(argv)
    import jax

    from slm_jax.training.optimizer import OptimizerConfig
    from slm_jax.training.partitioning import DEFAULT_RULES, MeshConfig, make_mesh
    from slm_jax.training.trainer import TrainConfig, Trainer

    lst_cfg = load_lst_config(args.gin_file, args.gin)
    slots = args.seq_len // lst_cfg.patch_size + 2 * args.segments
    lst_cfg = dataclasses.replace(lst_cfg, global_length=-(-slots // 128) * 128)
    data, fsdp, tensor = (int(x) for x in args.mesh.split(","))
    mesh = make_mesh(MeshConfig(data, fsdp, tensor))
    batch = speech_batch(np.random.default_rng(0), args.batch_size, args.seq_len, lst_cfg.vocab_size, args.segments)
    units = int((batch[contract.DECODER_MODALITY] == SPEECH).sum())
    impls = args.attention_impl.split(",") if args.attention_impl else [lst_cfg.global_model.attention_impl]
    rows = []
    for impl in impls:
        impl_cfg = dataclasses.replace(lst_cfg, global_model=dataclasses.replace(lst_cfg.global_model,
                                                                                 attention_impl=impl))
        pair = []
        for name, cfg in (("dense", impl_cfg.global_model), ("lst", impl_cfg)):
            trainer = Trainer(cfg, OptimizerConfig(warmup_steps=10), TrainConfig(), mesh, DEFAULT_RULES, 1000,
                              args.batch_size, args.seq_len)
            seconds, metrics = time_steps(trainer, batch, args.steps, args.warmup)
            row = {"model": name, "attention_impl": impl, "device": jax.devices()[0].device_kind,
                   "num_devices": jax.device_count(), "num_params": cfg.num_params(), "batch": args.batch_size,
                   "seq_len": args.seq_len, "step_seconds": seconds, "units_per_second": units / seconds,
                   "loss": float(metrics["loss"])}
            if name == "lst":
                row.update(patch_size=cfg.patch_size, global_length=cfg.global_length,
                           uncovered_tokens=float(metrics["uncovered_tokens"]))
            print(json.dumps(row), flush=True)
            pair.append(row)
        rows.extend(pair)
        ratio = pair[1]["units_per_second"] / pair[0]["units_per_second"]
        print(f"[{impl}] LST (static {lst_cfg.patch_size}) / dense speech units per second: {ratio:.2f}x "
              f"({pair[1]['units_per_second']:,.0f} vs {pair[0]['units_per_second']:,.0f}; target >= 2.5x)",
              flush=True)
    if len(impls) > 1:
        first = {r["model"]: r["units_per_second"] for r in rows[:2]}
        print(f"\nunits/s relative to attention_impl={impls[0]!r}:")
        for r in rows:
            print(f"  {r['model']:5s} {r['attention_impl']:20s} {r['units_per_second'] / first[r['model']]:.2f}x")

if __name__ == "__main__":
    main()
