"""`slm-jax compile --gin_file=RUN.gin --topology=v5e:4x4`: AOT-compile the train step for a
TPU slice on this CPU machine (libtpu) and print per-chip memory; exit 3 if it does not fit."""
from __future__ import annotations

import argparse

from slm_jax import gin_utils
from slm_jax.training.aot import compile_for_topology, format_report
from slm_jax.training.train import TrainRun


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slm-jax compile --gin_file=RUN.gin",
                                description="AOT-compile the train step for a TPU slice on this machine.")
    p.add_argument("--topology", required=True, help="TPU topology, e.g. v5e:2x2, v5p:2x2x2, v4:2x2x1")
    p.add_argument("--num_slices", type=int, default=1)
    return p


def main(argv) -> int:
    rest = gin_utils.setup(argv)
    args = parser().parse_args(rest)
    report = compile_for_topology(TrainRun(), args.topology, num_slices=args.num_slices)
    print(format_report(report))
    return 0 if report["fits"] else 3
