"""Per-chip memory of the train step per attention implementation, and the most rows per
chip that fit, by ahead-of-time compilation for a TPU slice on this CPU machine (libtpu).

For each run file, row length and `DecoderConfig.attention_impl`, it compiles the real
sharded train step (`slm-jax compile`'s path) at a growing number of rows per chip: powers
of two until one does not fit, then a bisection until the gap is at most a quarter of the
last fit. "Fits" means the compiled program's total per-chip bytes stay under
`--headroom` of HBM (default 0.9: 10% headroom, the rule the run files follow); the
compiler's own refusal (RESOURCE_EXHAUSTED) counts as not fitting.

    python bench/attention_memory.py --gin_file=gin/runs/tpu_v5e_1b.gin --topology=v5e:4x4 \\
        --seq_len=2048,8192 --attention_impl=xla,splash --out=runs/bench/attention_memory.jsonl

One JSON line per compile (appended to --out; combinations already there are not compiled
again, so an interrupted sweep resumes), then a table: per implementation and length, the
largest rows per chip that fit and its per-chip GiB, and the GiB at `--rows` (today's rows).
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
GIB = 1024 ** 3


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gin_file", required=True, help="a TPU run file (model + mesh + optimizer)")
    p.add_argument("--gin", action="append", default=[], help="extra binding")
    p.add_argument("--topology", required=True, help="e.g. v5e:4x4, v5p:4x4x2")
    p.add_argument("--seq_len", default="2048", help="comma-separated row lengths (tokens)")
    p.add_argument("--attention_impl", default="xla,splash", help="comma-separated implementations")
    p.add_argument("--rows", type=int, default=None, help="also report memory at this many rows per chip")
    p.add_argument("--max_rows", type=int, default=64)
    p.add_argument("--headroom", type=float, default=0.9, help="fit = total <= headroom * HBM")
    p.add_argument("--out", default="runs/bench/attention_memory.jsonl")
    return p.parse_args(argv)


def compile_once(args, impl: str, seq_len: int, rows: int, num_chips: int) -> dict:
    import gin

    from slm_jax.gin_utils import parse_gin
    from slm_jax.training.aot import compile_for_topology
    from slm_jax.training.train import TrainRun
    bindings = [*args.gin, f"SEQUENCE_LENGTH={seq_len}", f"BATCH_SIZE={rows * num_chips}",
                f"DecoderConfig.attention_impl='{impl}'"]
    parse_gin([args.gin_file], bindings)
    start = time.perf_counter()
    try:
        report = compile_for_topology(TrainRun(), args.topology)
    finally:
        gin.clear_config()
    total = report.get("total_bytes")
    hbm = report["hbm_bytes"]
    return {"gin_file": args.gin_file, "topology": args.topology, "attention_impl": impl, "seq_len": seq_len,
            "rows_per_chip": rows, "batch_size": report["batch_size"], "num_params": report["num_params"],
            "temp_gib": report.get("temp_bytes", 0) / GIB if "temp_bytes" in report else None,
            "total_gib": total / GIB if total is not None else None, "hbm_gib": hbm / GIB,
            "fits": total is not None and total <= args.headroom * hbm, "headroom": args.headroom,
            "compiler_error": report.get("compiler_error"), "compile_seconds": time.perf_counter() - start,
            "bindings": args.gin}


def key(r):
    return (r["gin_file"], r["topology"], r["attention_impl"], r["seq_len"], r["rows_per_chip"],
            r.get("headroom"), tuple(r.get("bindings", ())))


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from slm_jax.training.aot import topology_devices
    num_chips = len(topology_devices(args.topology))
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done[key(r)] = r

    def measure(impl, seq_len, rows):
        probe = {"gin_file": args.gin_file, "topology": args.topology, "attention_impl": impl, "seq_len": seq_len,
                 "rows_per_chip": rows, "headroom": args.headroom, "bindings": args.gin}
        if key(probe) in done:
            return done[key(probe)]
        r = compile_once(args, impl, seq_len, rows, num_chips)
        with out.open("a") as f:
            f.write(json.dumps(r) + "\n")
        done[key(r)] = r
        print(json.dumps(r), flush=True)
        return r

    table = []
    for seq_len in (int(x) for x in args.seq_len.split(",")):
        for impl in args.attention_impl.split(","):
            lo, hi, rows = None, None, 1
            while rows <= args.max_rows:  # powers of two
                if measure(impl, seq_len, rows)["fits"]:
                    lo, rows = rows, rows * 2
                else:
                    hi = rows
                    break
            while lo is not None and hi is not None and hi - lo > max(1, lo // 4):  # bisect
                mid = (lo + hi) // 2
                if measure(impl, seq_len, mid)["fits"]:
                    lo = mid
                else:
                    hi = mid
            best = measure(impl, seq_len, lo) if lo else None
            at = measure(impl, seq_len, args.rows) if args.rows else None
            table.append((seq_len, impl, lo, best, hi, at))
    print(f"\n{args.gin_file} on {args.topology} ({num_chips} chips); fit = total <= {args.headroom:.0%} of HBM")
    print("length  attention_impl  most rows/chip  GiB/chip there  first rows that do not fit"
          + (f"  GiB/chip at {args.rows} rows" if args.rows else ""))
    for seq_len, impl, lo, best, hi, at in table:
        at_s = ""
        if at is not None:
            at_s = f"  {at['total_gib']:.2f}" if at["total_gib"] is not None else "  refused by the compiler"
        print(f"{seq_len:6d}  {impl:14s}  {lo if lo else 0:14d}  "
              f"{best['total_gib'] if best else float('nan'):14.2f}  {hi if hi else '-':>26}" + at_s)


if __name__ == "__main__":
    main()
