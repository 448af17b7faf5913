"""Ahead-of-time compilation of the train step for a TPU slice from a CPU machine.

libtpu (a PyPI package) provides the TPU compiler; `jax.experimental.topologies` gives
device objects for a topology we do not have, so the full sharded train step compiles
and reports its per-chip memory without touching a TPU.
"""
from __future__ import annotations

from typing import Any

import jax

from slm_jax.training.trainer import shard_bytes_per_device

GIB = 1024 ** 3
# HBM per chip, by topology-name prefix.
HBM_BYTES = {"v4": 32 * GIB, "v5e": 16 * GIB, "v5litepod": 16 * GIB, "v5p": 95 * GIB, "v6e": 32 * GIB}


def _hbm_for(topology: str) -> int | None:
    prefix = topology.split(":")[0].lower()
    return HBM_BYTES.get(prefix)


def topology_devices(topology: str, num_slices: int = 1):
    """Devices of a TPU topology such as 'v5e:2x2' or 'v5p:2x2x2' (no TPU needed)."""
    import os

    from jax.experimental import topologies
    # AOT compilation touches no TPU, so another process holding libtpu (a second compile, a
    # test worker) is no reason to refuse: skip libtpu's single-process lockfile.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    if ":" not in topology:
        raise ValueError(f"--topology={topology}: expected NAME:SHAPE such as v5e:2x2 or v5p:2x2x2")
    try:
        dims = [int(d) for d in topology.split(":")[1].split("x")]
    except ValueError:
        raise ValueError(f"--topology={topology}: expected NAME:SHAPE such as v5e:2x2 or v5p:2x2x2") from None
    # Hosts hold up to 2x2 chips; smaller slices are a single host.
    chips_per_host = (min(dims[0], 2), min(dims[1], 2) if len(dims) > 1 else 1, 1)
    try:
        desc = topologies.get_topology_desc(platform="tpu", topology_name=topology, chip_config_name="default",
                                            chips_per_host_bounds=chips_per_host, num_slices=num_slices)
    except Exception as err:  # noqa: BLE001 - libtpu's errors are terse; add what was asked
        raise ValueError(f"--topology={topology}: libtpu cannot build this TPU topology ({err}). "
                         "Is libtpu installed (pip install -e '.[test]')?") from err
    return desc.devices


def compile_for_topology(run, topology: str, num_slices: int = 1) -> dict[str, Any]:
    from slm_jax.training.train import build_trainer
    devices = topology_devices(topology, num_slices)
    trainer = build_trainer(run, devices=devices)
    try:
        compiled = trainer.lower_train_step().compile()
    except jax.errors.JaxRuntimeError as err:
        if "RESOURCE_EXHAUSTED" not in str(err):
            raise
        # The TPU compiler refuses programs that cannot fit; report it like a measurement.
        return {"topology": topology, "num_devices": len(devices), "device_kind": devices[0].device_kind,
                "mesh": dict(trainer.mesh.shape), "num_params": run.model.num_params(),
                "batch_size": trainer.batch_size, "sequence_length": trainer.sequence_length,
                "fits": False, "compiler_error": str(err).split("\n")[0],
                "params_bytes": shard_bytes_per_device(trainer.abstract_state["params"]),
                "optimizer_bytes": shard_bytes_per_device(trainer.abstract_state["opt_state"]),
                "hbm_bytes": _hbm_for(topology)}
    mem = compiled.memory_analysis()
    params = shard_bytes_per_device(trainer.abstract_state["params"])
    optimizer = shard_bytes_per_device(trainer.abstract_state["opt_state"])
    batch = shard_bytes_per_device(trainer.abstract_batch())
    temp = int(getattr(mem, "temp_size_in_bytes", 0))
    code = int(getattr(mem, "generated_code_size_in_bytes", 0))
    arguments = int(getattr(mem, "argument_size_in_bytes", params + optimizer + batch))
    outputs = int(getattr(mem, "output_size_in_bytes", 0))
    aliased = int(getattr(mem, "alias_size_in_bytes", 0))
    total = arguments + outputs - aliased + temp + code
    hbm = _hbm_for(topology)
    return {
        "topology": topology, "num_devices": len(devices), "device_kind": devices[0].device_kind,
        "mesh": dict(trainer.mesh.shape), "num_params": run.model.num_params(),
        "batch_size": trainer.batch_size, "sequence_length": trainer.sequence_length,
        "params_bytes": params, "optimizer_bytes": optimizer, "batch_bytes": batch, "temp_bytes": temp,
        "code_bytes": code, "total_bytes": total, "hbm_bytes": hbm, "fits": hbm is None or total <= hbm,
    }


def format_report(r: dict[str, Any]) -> str:
    gib = lambda b: f"{b / GIB:8.3f} GiB"  # noqa: E731
    if "compiler_error" in r:
        return "\n".join([
            f"topology: {r['topology']} ({r['num_devices']} x {r['device_kind']}), mesh {r['mesh']}",
            f"model: {r['num_params'] / 1e6:.1f}M params, batch {r['batch_size']} x {r['sequence_length']}",
            f"  params       {gib(r['params_bytes'])}",
            f"  optimizer    {gib(r['optimizer_bytes'])}",
            f"DOES NOT FIT: {r['compiler_error']}",
        ])
    lines = [
        f"topology: {r['topology']} ({r['num_devices']} x {r['device_kind']}), mesh {r['mesh']}",
        f"model: {r['num_params'] / 1e6:.1f}M params, batch {r['batch_size']} x {r['sequence_length']}",
        "per-chip memory:",
        f"  params       {gib(r['params_bytes'])}",
        f"  optimizer    {gib(r['optimizer_bytes'])}",
        f"  batch        {gib(r['batch_bytes'])}",
        f"  temporaries  {gib(r['temp_bytes'])}",
        f"  code         {gib(r['code_bytes'])}",
        f"  total        {gib(r['total_bytes'])}",
    ]
    if r["hbm_bytes"]:
        verdict = "fits" if r["fits"] else "DOES NOT FIT"
        lines.append(f"HBM per chip {gib(r['hbm_bytes'])}: {verdict} ({100 * r['total_bytes'] / r['hbm_bytes']:.1f}%)")
    return "\n".join(lines)
