"""Train-step throughput and MFU of a gin model config on whatever devices are present.

Synthetic packed batches (no tensorflow/seqio needed), the real jitted, sharded,
donated train step of slm_jax. Optionally runs the PyTorch peer in the same process
(Hugging Face LlamaForCausalLM of the same shape, bf16, SDPA, fused AdamW; eager and
torch.compile) and prints the ratio, so the comparison is from one run on one device.

    python bench/train_step.py --gin_file=gin/models/1b.gin --seq_len=2048 --batch_size=4 --peer
    python bench/train_step.py --gin_file=gin/models/tiny.gin --steps=5          # CPU smoke run
    python bench/train_step.py --gin_file=gin/models/1b.gin --seq_len=8192 --batch_size=1 \
        --attention_impl=xla,flash_gpu,cudnn --peer --peer_modes=eager       # fused vs XLA vs torch SDPA

`--attention_impl` takes a comma-separated list: slm_jax runs once per implementation (each
with the same synthetic batches) and the summary gives every system relative to the first.

Prints one JSON line per measured system, then a summary with ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gin_file", default="gin/models/tiny.gin", help="a gin/models/*.gin size")
    p.add_argument("--gin", action="append", default=[], help="extra binding, e.g. DecoderConfig.remat_policy='full'")
    p.add_argument("--batch_size", type=int, default=4, help="global batch (rows)")
    p.add_argument("--seq_len", type=int, default=2048)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps (compile + warm caches)")
    p.add_argument("--accum", type=int, default=1, help="gradient accumulation steps")
    p.add_argument("--mesh", default="1,-1,1", help="data,fsdp,tensor sizes (-1 fills)")
    p.add_argument("--segments", type=int, default=4, help="packed segments per row (random lengths)")
    p.add_argument("--attention_impl", default=None,
                   help="comma-separated DecoderConfig.attention_impl values, one slm_jax run each "
                        "(default: the config's)")
    p.add_argument("--peer", action="store_true", help="also run the HF transformers peer (torch)")
    p.add_argument("--peer_modes", default="eager,compile")
    p.add_argument("--out", default=None, help="append JSON lines here too")
    return p.parse_args(argv)


def synthetic_batch(rng, batch, length, vocab, segments):
    """Random tokens packed into `segments` pieces per row; positions restart per piece."""
    tokens = rng.integers(3, vocab, (batch, length + 1)).astype(np.int32)
    seg = np.zeros((batch, length), np.int32)
    pos = np.zeros((batch, length), np.int32)
    for i in range(batch):
        cuts = np.sort(rng.choice(np.arange(1, length), segments - 1, replace=False)) if segments > 1 else []
        bounds = [0, *cuts, length]
        for s, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]), start=1):
            seg[i, a:b], pos[i, a:b] = s, np.arange(b - a)
    from slm_jax import contract
    return {contract.DECODER_INPUT_TOKENS: tokens[:, :-1], contract.DECODER_TARGET_TOKENS: tokens[:, 1:],
            contract.DECODER_LOSS_WEIGHTS: np.ones((batch, length), np.int32), contract.DECODER_SEGMENT_IDS: seg,
            contract.DECODER_POSITIONS: pos}


def load_model_config(gin_file, bindings):
    import gin
    from slm_jax.models.decoder import DecoderConfig
    gin.clear_config()
    path = pathlib.Path(gin_file)
    gin.parse_config_files_and_bindings([str(path if path.is_file() else REPO / gin_file)], bindings,
                                        finalize_config=False)
    return DecoderConfig()


def bench_slm_jax(args, cfg):
    import jax
    from slm_jax.models.attention import resolve_attention_impl
    from slm_jax.training import metrics as metrics_lib
    from slm_jax.training.optimizer import OptimizerConfig
    from slm_jax.training.partitioning import DEFAULT_RULES, MeshConfig, make_mesh
    from slm_jax.training.trainer import TrainConfig, Trainer

    data, fsdp, tensor = (int(x) for x in args.mesh.split(","))
    mesh = make_mesh(MeshConfig(data, fsdp, tensor))
    trainer = Trainer(cfg, OptimizerConfig(warmup_steps=10), TrainConfig(gradient_accumulation_steps=args.accum),
                      mesh, DEFAULT_RULES, 1000, args.batch_size, args.seq_len)
    rng = np.random.default_rng(0)
    batches = [trainer.global_batch(synthetic_batch(rng, args.batch_size, args.seq_len, cfg.vocab_size,
                                                    args.segments)) for _ in range(2)]
    state = trainer.init_state(0)
    t0 = time.perf_counter()
    for i in range(args.warmup):
        state, m = trainer.train_step(state, batches[i % 2])
    jax.block_until_ready(m)
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(args.steps):
        state, m = trainer.train_step(state, batches[i % 2])
    jax.block_until_ready((state, m))
    step_s = (time.perf_counter() - t0) / args.steps
    tokens = args.batch_size * args.seq_len
    tps = tokens / step_s
    return {"system": "slm_jax", "device": jax.devices()[0].device_kind, "num_devices": jax.device_count(),
            "tokens_per_second": tps, "step_seconds": step_s, "warmup_seconds": warmup_s,
            "mfu": metrics_lib.mfu(tps, cfg.flops_per_token(args.seq_len), jax.device_count()),
            "loss": float(m["loss"]), "attention_impl": cfg.attention_impl,
            "attention_resolved": resolve_attention_impl(
                cfg.attention_impl, length=args.seq_len, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
                head_dim=cfg.resolved_head_dim, dtype=cfg.dtype, platform=jax.default_backend()),
            "remat": cfg.remat_policy}


def bench_peer(args, cfg, mode):
    """HF transformers Llama of the same shape, PyTorch bf16 + SDPA + fused AdamW."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from slm_jax.training import metrics as metrics_lib
    hf_cfg = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.embed_dim, intermediate_size=cfg.mlp_dim,
                         num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                         num_key_value_heads=cfg.num_kv_heads, rope_theta=cfg.rope_theta,
                         tie_word_embeddings=cfg.tie_embeddings, attn_implementation="sdpa",
                         max_position_embeddings=args.seq_len)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = LlamaForCausalLM(hf_cfg).to(device=device, dtype=torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=device == "cuda")
    step_model = torch.compile(model) if mode == "compile" else model
    rng = np.random.default_rng(0)
    ids = torch.as_tensor(rng.integers(3, cfg.vocab_size, (args.batch_size, args.seq_len)), device=device)

    def step():
        loss = step_model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync()
    step_s = (time.perf_counter() - t0) / args.steps
    tps = args.batch_size * args.seq_len / step_s
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = next((f for p, f in metrics_lib.PEAK_BF16_FLOPS if name.startswith(p)), None)
    return {"system": f"hf_torch_{mode}", "device": name, "num_devices": 1, "tokens_per_second": tps,
            "step_seconds": step_s, "mfu": tps * cfg.flops_per_token(args.seq_len) / peak if peak else None,
            "loss": float(loss), "torch": torch.__version__}


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cfg = load_model_config(args.gin_file, args.gin)
    print(f"# model {args.gin_file}: {cfg.num_params() / 1e6:.1f}M params, batch {args.batch_size} x "
          f"{args.seq_len}, {cfg.flops_per_token(args.seq_len) / 1e9:.2f} GFLOP/token", flush=True)
    import dataclasses
    impls = args.attention_impl.split(",") if args.attention_impl else [cfg.attention_impl]
    results = []
    for impl in impls:
        try:
            results.append(bench_slm_jax(args, dataclasses.replace(cfg, attention_impl=impl)))
            results[-1]["system"] = f"slm_jax[{impl}]"
        except Exception as err:  # noqa: BLE001 - e.g. a fused kernel this device cannot run; keep the others
            results.append({"system": f"slm_jax[{impl}]", "error": f"{type(err).__name__}: {err}"})
        print(json.dumps(results[-1]), flush=True)
    if args.peer:
        for mode in args.peer_modes.split(","):
            try:
                results.append(bench_peer(args, cfg, mode))
            except Exception as err:  # noqa: BLE001 - report the peer failure, keep our figure
                results.append({"system": f"hf_torch_{mode}", "error": f"{type(err).__name__}: {err}"})
            print(json.dumps(results[-1]), flush=True)
    ours = next((r["tokens_per_second"] for r in results if "error" not in r), None)
    if ours is None:
        raise SystemExit("every slm_jax run failed")
    print(f"\nsystem                       tokens/s      MFU   {results[0]['system']} / system")
    for r in results:
        if "error" in r:
            print(f"{r['system']:26s}  failed: {r['error'][:80]}")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "  n/a"
        print(f"{r['system']:26s} {r['tokens_per_second']:10,.0f} {mfu:>8s}   {ours / r['tokens_per_second']:.2f}x")
    if args.out:
        with open(args.out, "a") as f:
            for r in results:
                f.write(json.dumps({**r, "args": vars(args)}) + "\n")


if __name__ == "__main__":
    main()
