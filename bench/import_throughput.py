"""`slm-jax prepare import` throughput and memory: records/s and units/s per worker of the
single-process streaming import and of the Beam DirectRunner (one worker), and the peak RSS
of single-process imports of a small and a large synthetic slamkit corpus (each run in a fresh
process, so the peaks are that run's). Ratios first: DirectRunner vs single process, large vs small.

    python bench/import_throughput.py --small=1000 --large=100000 --beam_records=10000

The corpus: slamkit-layout JSONL, 100 deduplicated units per record with run lengths 1-4
(~250 frames at 25 Hz), a text field. Beam figures need the `beam` extra (else skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time


def synth(path: str, n: int) -> int:
    """Writes n slamkit records; returns the number of frame-level units."""
    rng, frames = random.Random(0), 0
    with open(path, "w") as f:
        for i in range(n):
            runs = [rng.randint(1, 4) for _ in range(100)]
            frames += sum(runs)
            f.write(json.dumps({"file_name": f"spk{i % 97}/utt{i:08d}.flac",
                                "units": [rng.randrange(500) for _ in runs], "duration": runs,
                                "text": "the cat sat on the mat"}) + "\n")
    return frames


def child(mode: str, src: str, out: str) -> None:
    """One import in this process; prints {"seconds", "written", "max_rss_mb"}."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    t0 = time.perf_counter()
    if mode == "single":
        from slm_jax.data.corpus.import_run import import_to_tfrecord
        summary = import_to_tfrecord("slamkit", src, out, unit_rate_hz=25.0, num_shards=4)
    else:
        from slm_jax.data.corpus.beam_import import run_beam_import
        summary = run_beam_import("slamkit", src, out, runner="DirectRunner", unit_rate_hz=25.0, num_shards=4,
                                  pipeline_args=["--direct_num_workers=1"])
    print(json.dumps({"seconds": time.perf_counter() - t0, "written": summary["written"],
                      "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run(mode: str, src: str, out: str) -> dict:
    res = subprocess.run([sys.executable, __file__, "--child", mode, src, out], capture_output=True, text=True,
                         check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", type=int, default=1000)
    p.add_argument("--large", type=int, default=100_000)
    p.add_argument("--beam_records", type=int, default=10_000)
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(*args.child)
    with tempfile.TemporaryDirectory() as tmp:
        rows = {}
        for name, n in (("small", args.small), ("large", args.large), ("beam", args.beam_records)):
            src = os.path.join(tmp, f"{name}.jsonl")
            units = synth(src, n)
            modes = ["single"] + (["beam"] if name == "beam" else [])
            for mode in modes:
                if mode == "beam":
                    try:
                        import apache_beam  # noqa: F401
                    except ImportError:
                        print("DirectRunner: skipped (apache-beam not installed: pip install -e '.[beam]')")
                        continue
                r = run(mode, src, os.path.join(tmp, f"out_{name}_{mode}", "c"))
                rows[(name, mode)] = {**r, "records": n, "units": units}
        small, large = rows[("small", "single")], rows[("large", "single")]
        print(f"peak RSS, single process: {small['records']} records {small['max_rss_mb']:.0f} MB, "
              f"{large['records']} records {large['max_rss_mb']:.0f} MB: growth "
              f"{large['max_rss_mb'] - small['max_rss_mb']:+.1f} MB")
        for key, r in sorted(rows.items()):
            print(f"{key[1]:>6} {r['records']:>7} records: {r['records'] / r['seconds']:,.0f} records/s, "
                  f"{r['units'] / r['seconds'] / 1e6:.2f}M units/s per worker ({r['seconds']:.1f} s incl. start-up)")
        if ("beam", "beam") in rows:
            b, s = rows[("beam", "beam")], rows[("beam", "single")]
            print(f"DirectRunner / single process, {b['records']} records: {s['seconds'] / b['seconds']:.2f}x throughput")


if __name__ == "__main__":
    main()
