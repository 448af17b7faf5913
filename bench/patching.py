"""LST latent patching kernels vs their XLA references: forward+backward time and HBM bandwidth.

For patch_mean, patch_attention_pool and patch_broadcast (slm_jax.kernels.patching), times
the jitted forward and forward+backward (jax.vjp with a fixed random cotangent) of the
Pallas kernel and of the pure-JAX reference on the same inputs, and converts the
forward+backward time into achieved bandwidth (bytes the op must read and write,
fwd+bwd, divided by time). The ceiling is a jitted `x + 1` of the same [B, T, D] tensor
measured in the same run (read + write bytes / time).

    python bench/patching.py --batch=8 --units=8192 --dim=2048                  # H100 / TPU
    python bench/patching.py --batch=8 --units=8192 --dim=2048 --patch_len=4    # static patches
    python bench/patching.py --batch=2 --units=256 --dim=128 --runs=3           # CPU smoke run

On CPU the kernel runs in Pallas interpret mode (correct, slow: a smoke run, not a figure).
Prints one JSON line per measurement, then a table with the kernel/reference speedup and
the fraction of the copy ceiling. Needs only jax and numpy.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--units", type=int, default=8192, help="rows (speech units) per sequence, T")
    p.add_argument("--dim", type=int, default=2048, help="feature size D")
    p.add_argument("--patch_len", type=int, default=0, help="static patch length; 0: random 1..--max_patch_len")
    p.add_argument("--max_patch_len", type=int, default=16)
    p.add_argument("--pad_frac", type=float, default=0.0, help="trailing padding (-1) per row, fraction of T")
    p.add_argument("--num_patches", type=int, default=0, help="P; 0: patches needed, rounded up to 128")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--ops", default="mean,attention,broadcast")
    p.add_argument("--kernel_impl", default="", help="impl for the kernel rows (default: pallas; "
                   "pallas_interpret on CPU)")
    p.add_argument("--runs", type=int, default=20, help="timed runs (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs after compiling")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="", help="append the JSON lines to this file")
    return p.parse_args(argv)


def make_patch_ids(rng, batch, units, patch_len, max_patch_len, pad_frac):
    ids = np.full((batch, units), -1, np.int32)
    valid = units - int(round(pad_frac * units))
    for b in range(batch):
        if patch_len:
            lengths = np.full(valid // patch_len + 1, patch_len)
        else:
            lengths = rng.integers(1, max_patch_len + 1, size=valid)
        row = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)[:valid]
        ids[b, :valid] = row
    return ids


def median_time(fn, args, runs, warmup):
    import jax
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))  # compile + first run
    compile_s = time.perf_counter() - t0
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), compile_s


def main(argv=None):
    args = parse_args(argv)
    import jax
    import jax.numpy as jnp

    from slm_jax.kernels import patching as pk

    backend = jax.default_backend()
    kernel_impl = args.kernel_impl or ("pallas" if backend in ("tpu", "gpu") else "pallas_interpret")
    dtype = jnp.dtype(args.dtype)
    isz = dtype.itemsize
    rng = np.random.default_rng(args.seed)
    b, t, d = args.batch, args.units, args.dim
    ids_np = make_patch_ids(rng, b, t, args.patch_len, args.max_patch_len, args.pad_frac)
    needed = int(ids_np.max()) + 1
    p = args.num_patches or -(-needed // 128) * 128
    if p < needed:
        raise SystemExit(f"--num_patches={p} < {needed} patches in the generated layout")
    key = jax.random.PRNGKey(args.seed)
    kx, ks, ky, kg, kh = jax.random.split(key, 5)
    ids = jnp.asarray(ids_np)
    x = jax.random.normal(kx, (b, t, d), dtype)
    scores = jax.random.normal(ks, (b, t), jnp.float32)
    y = jax.random.normal(ky, (b, p, d), dtype)
    ct_pool = jax.random.normal(kg, (b, p, d), dtype)
    ct_rows = jax.random.normal(kh, (b, t, d), dtype)
    device = jax.devices()[0]
    header = {"device": device.device_kind, "backend": backend, "jax": jax.__version__, "dtype": args.dtype,
              "batch": b, "units": t, "dim": d, "num_patches": p, "patches_used": needed,
              "patch_len": args.patch_len or f"1..{args.max_patch_len}", "pad_frac": args.pad_frac,
              "kernel_impl": kernel_impl}
    print("# " + json.dumps(header), flush=True)
    lines = []

    def emit(rec):
        rec = {**header, **rec}
        lines.append(rec)
        print(json.dumps(rec), flush=True)

    # Copy ceiling: read + write one [B, T, D] tensor.
    copy = jax.jit(lambda v: v + jnp.asarray(1, dtype))
    sec, _ = median_time(copy, (x,), args.runs, args.warmup)
    copy_bytes = 2 * b * t * d * isz
    ceiling = copy_bytes / sec
    emit({"op": "copy", "impl": "xla", "fwd_bwd_ms": sec * 1e3, "bytes": copy_bytes, "gb_per_s": ceiling / 1e9})

    rows_bytes, pool_bytes = b * t * d * isz, b * p * d * isz
    spec = {
        # op: (function of (x-or-y, scores, impl), primal, cotangent, fwd bytes, fwd+bwd bytes)
        "mean": (lambda v, s, impl: pk.patch_mean(v, ids, p, impl=impl), x, ct_pool,
                 rows_bytes + pool_bytes, 2 * (rows_bytes + pool_bytes)),
        "attention": (lambda v, s, impl: pk.patch_attention_pool(v, s, ids, p, impl=impl), x, ct_pool,
                      rows_bytes + pool_bytes, 3 * rows_bytes + 2 * pool_bytes),
        "broadcast": (lambda v, s, impl: pk.patch_broadcast(v, ids, impl=impl), y, ct_rows,
                      rows_bytes + pool_bytes, 2 * (rows_bytes + pool_bytes)),
    }
    for op in [o.strip() for o in args.ops.split(",") if o.strip()]:
        fn, primal, ct, fwd_bytes, total_bytes = spec[op]
        for impl in (kernel_impl, "reference"):
            fwd = jax.jit(lambda v, s, impl=impl, fn=fn: fn(v, s, impl))

            def fwd_bwd(v, s, c, impl=impl, fn=fn):
                if op == "attention":
                    out, vjp = jax.vjp(lambda v, s: fn(v, s, impl), v, s)
                else:
                    out, vjp = jax.vjp(lambda v: fn(v, s, impl), v)
                return out, vjp(c)
            try:
                fwd_s, _ = median_time(fwd, (primal, scores), args.runs, args.warmup)
                sec, compile_s = median_time(jax.jit(fwd_bwd), (primal, scores, ct), args.runs, args.warmup)
            except Exception as err:  # noqa: BLE001 - report and go on with the other rows
                emit({"op": op, "impl": impl, "error": f"{type(err).__name__}: {str(err)[:300]}"})
                continue
            emit({"op": op, "impl": impl, "fwd_ms": fwd_s * 1e3, "fwd_bwd_ms": sec * 1e3,
                  "compile_s": compile_s, "bytes": total_bytes, "gb_per_s": total_bytes / sec / 1e9,
                  "fwd_gb_per_s": fwd_bytes / fwd_s / 1e9, "frac_of_copy": total_bytes / sec / ceiling})

    print(f"\ncopy ceiling ({b}x{t}x{d} {args.dtype}, read+write): {ceiling / 1e9:,.1f} GB/s on {device.device_kind}")
    print(f"{'op':10s} {'impl':18s} {'fwd ms':>9s} {'fwd+bwd ms':>11s} {'GB/s':>9s} {'of copy':>8s} "
          f"{'speedup':>8s}")
    by_op = {}
    for r in lines:
        if r["op"] != "copy":
            by_op.setdefault(r["op"], {})[r["impl"]] = r
    for op, rows in by_op.items():
        ref = rows.get("reference", {}).get("fwd_bwd_ms")
        for impl, r in rows.items():
            if "error" in r:
                print(f"{op:10s} {impl:18s} failed: {r['error'][:80]}")
                continue
            speed = f"{ref / r['fwd_bwd_ms']:.2f}x" if ref else "-"
            print(f"{op:10s} {impl:18s} {r['fwd_ms']:9.3f} {r['fwd_bwd_ms']:11.3f} {r['gb_per_s']:9.1f} "
                  f"{r['frac_of_copy']:8.1%} {speed:>8s}")
    print("speedup = reference fwd+bwd time / this row's; GB/s counts the bytes the op must read and "
          "write (fwd+bwd)")
    if args.out:
        with open(args.out, "a") as f:
            for r in lines:
                f.write(json.dumps({**r, "args": vars(args)}) + "\n")


if __name__ == "__main__":
    main()
