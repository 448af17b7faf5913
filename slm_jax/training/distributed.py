"""Joining a multi-process JAX job: TPU pod slices, SLURM GPU clusters, an explicit coordinator.

`initialize(cfg)` runs first in `slm-jax train`, before any JAX device use (JAX refuses
to join a job once its backends exist). Where each setting comes from, first match wins:

    setting           gin (DistributedConfig.*)   environment              SLURM (inside srun)
    coordinator       coordinator_address         SLM_JAX_COORDINATOR      first host of SLURM_STEP_NODELIST
    processes         num_processes               SLM_JAX_NUM_PROCESSES    SLURM_NTASKS
    this process      process_id                  SLM_JAX_PROCESS_ID       SLURM_PROCID
    local devices     local_device_ids            SLM_JAX_LOCAL_DEVICE_IDS (all visible devices)
    mode              mode                        SLM_JAX_DISTRIBUTED      ('auto')

Modes: 'auto' joins with an explicit coordinator if one is given, else with SLURM's
variables inside a multi-task `srun` step, else through JAX's own TPU VM detection when
TPU chips are attached, else runs as a single process. 'explicit', 'slurm' and 'tpu'
force one of these (and fail, naming what is missing, if it is not possible); 'off'
never joins.

Why SLURM is resolved here and not by `jax.distributed.initialize()`'s own detection:
JAX pins every SLURM task to the one GPU numbered SLURM_LOCALID, which leaves 7 of 8
GPUs idle when a node runs one task (the layout `launch/slurm_gpu.sbatch` uses). Here a
task sees every GPU SLURM gives it (one task per node: all; `--gpus-per-task=1`: one).
"""
from __future__ import annotations

import dataclasses
import logging
import numbers
import os
import re
from typing import Mapping, Sequence

import gin
import jax

from slm_jax.gin_utils import ConfigError

log = logging.getLogger("slm_jax")

ENV_MODE = "SLM_JAX_DISTRIBUTED"
ENV_COORDINATOR = "SLM_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "SLM_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "SLM_JAX_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "SLM_JAX_LOCAL_DEVICE_IDS"
ENV_COORDINATOR_PORT = "SLM_JAX_COORDINATOR_PORT"
MODES = ("auto", "off", "explicit", "slurm", "tpu")
CPU_COLLECTIVES = ("gloo", "mpi")  # values of jax_cpu_collectives_implementation


class DistributedConfigError(ConfigError):
    """The multi-process settings are missing, malformed or inconsistent (`slm-jax` exits 2)."""


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """How this process joins the job (gin: `DistributedConfig.*`; see the module docstring).

    None means "from the environment" (then SLURM, then the default). Every field is
    checked in `__post_init__`; values from the environment are checked by `resolve`.

    Attributes:
      mode: one of 'auto', 'off', 'explicit', 'slurm', 'tpu', or None ($SLM_JAX_DISTRIBUTED, else 'auto').
      coordinator_address: 'host:port' of process 0, port in [1, 65535]; or None.
      num_processes: processes in the job; int >= 1, or None.
      process_id: this process's rank; int in [0, num_processes), or None.
      local_device_ids: ids of the local devices this process uses; distinct ints >= 0 (a
        sequence, or a comma-separated string like $SLM_JAX_LOCAL_DEVICE_IDS), or None (all visible).
      initialization_timeout_s: seconds to wait for every process to reach the coordinator; int >= 1.
      cpu_collectives: cross-process collectives on CPU devices (tests, CPU clusters): 'gloo'
        or 'mpi'; GPU/TPU use their own.

    Raises DistributedConfigError (a ConfigError) naming `DistributedConfig.<field>`.
    """

    mode: str | None = None
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: Sequence[int] | str | None = None
    initialization_timeout_s: int = 300
    cpu_collectives: str = "gloo"

    def __post_init__(self):
        def check(field: str, ok: bool, rule: str):
            if not ok:
                raise DistributedConfigError(f"DistributedConfig.{field}={getattr(self, field)!r}: must be {rule}")

        check("mode", self.mode is None or self.mode in MODES, f"None or one of {', '.join(MODES)}")
        if self.coordinator_address is not None:
            _check_address(self.coordinator_address, "DistributedConfig.coordinator_address")
        check("num_processes", self.num_processes is None or (_is_int(self.num_processes)
                                                              and self.num_processes >= 1), "None or an int >= 1")
        check("process_id", self.process_id is None or (_is_int(self.process_id) and self.process_id >= 0),
              "None or an int >= 0")
        check("process_id", None in (self.process_id, self.num_processes) or self.process_id < self.num_processes,
              f"< DistributedConfig.num_processes={self.num_processes}")
        if self.local_device_ids is not None:
            if not isinstance(self.local_device_ids, str):
                check("local_device_ids", isinstance(self.local_device_ids, Sequence)
                      and all(_is_int(i) for i in self.local_device_ids), "None or a sequence of ints")
            _device_ids(self.local_device_ids, "DistributedConfig.local_device_ids")
        check("initialization_timeout_s", _is_int(self.initialization_timeout_s)
              and self.initialization_timeout_s >= 1, "an int >= 1 (seconds)")
        check("cpu_collectives", self.cpu_collectives in CPU_COLLECTIVES, f"one of {', '.join(CPU_COLLECTIVES)}")


@dataclasses.dataclass(frozen=True)
class JoinPlan:
    """What `initialize` will do; `method` is 'single', 'explicit', 'slurm' or 'tpu'."""

    method: str
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None

    @property
    def joins(self) -> bool:
        """True when `initialize` will call jax.distributed.initialize (TPU, or > 1 process)."""
        return self.method == "tpu" or (self.method != "single" and self.num_processes > 1)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_address(address, source: str) -> str:
    """`address` if it is 'host:port' (port in [1, 65535]); DistributedConfigError naming `source` if not."""
    host, _, port = str(address).rpartition(":")
    if not (isinstance(address, str) and host and port.isdigit() and 1 <= int(port) <= 65535):
        raise DistributedConfigError(f"{source}={address!r}: expected host:port (port in [1, 65535])")
    return address


def _device_ids(ids, source: str) -> tuple[int, ...]:
    """Distinct ints >= 0 from a sequence or a comma-separated string; DistributedConfigError if not."""
    if isinstance(ids, str):
        ids = [part for part in ids.split(",") if part.strip()]
    parsed = tuple(_int_setting(i, source) for i in ids)
    if any(i < 0 for i in parsed) or len(set(parsed)) != len(parsed):
        raise DistributedConfigError(f"{source}={ids!r}: device ids must be distinct ints >= 0")
    return parsed


def _int_setting(value, source: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DistributedConfigError(f"{source}={value!r} must be an integer") from None


def _pick(gin_value, gin_key: str, env: Mapping[str, str], *env_keys: str):
    """(value, source) from gin, else the first environment variable that is set."""
    if gin_value is not None:
        return gin_value, f"DistributedConfig.{gin_key}"
    for key in filter(None, env_keys):
        if env.get(key, "") != "":
            return env[key], f"${key}"
    return None, None


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list: 'gpu[003-005,9],cpu1' -> 'gpu003', 'a-[1-2]-ib' -> 'a-1-ib'."""
    prefix, ranges, suffix = re.match(r"([^,\[]*)(?:\[([^\]]*)\])?([^,]*)", nodelist.strip()).groups()
    first = re.split(r"[-,]", ranges, maxsplit=1)[0] if ranges else ""
    return f"{prefix}{first}{suffix}"


def _in_slurm_step(env: Mapping[str, str]) -> bool:
    """Inside `srun` (not merely the batch script, which has no step node list)."""
    return all(env.get(k) for k in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_NTASKS"))


def _slurm_coordinator(env: Mapping[str, str]) -> str:
    # Same port rule as JAX's own SLURM support: one port per job in the ephemeral range.
    port = env.get(ENV_COORDINATOR_PORT) or str(61440 + int(env["SLURM_JOB_ID"]) % 4096)
    return f"{first_slurm_host(env['SLURM_STEP_NODELIST'])}:{port}"


def _tpu_chips_attached() -> bool:
    """TPU chips on this host's PCI bus (what JAX itself checks; no backend started)."""
    try:
        from jax._src import hardware_utils
        return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
    except Exception:  # noqa: BLE001 - a private helper; no TPU is the safe answer
        return False


def _mode(cfg: DistributedConfig, env: Mapping[str, str]) -> str:
    mode, source = _pick(cfg.mode, "mode", env, ENV_MODE)
    mode = mode or "auto"
    if mode not in MODES:
        raise DistributedConfigError(f"{source}={mode!r}: expected one of {', '.join(MODES)}")
    return mode


def _method(mode: str, has_coordinator: bool, env: Mapping[str, str]) -> str:
    if mode != "auto":
        return {"off": "single"}.get(mode, mode)
    if has_coordinator:
        return "explicit"
    if _in_slurm_step(env) and _int_setting(env["SLURM_NTASKS"], "$SLURM_NTASKS") > 1:
        return "slurm"
    if _tpu_chips_attached():
        return "tpu"
    return "single"


def resolve(cfg: DistributedConfig, env: Mapping[str, str] | None = None) -> JoinPlan:
    """Decide how to join from gin + environment; pure (tests pass a fake `env`, default os.environ).

    Raises DistributedConfigError naming the gin key or environment variable that is
    missing, malformed or inconsistent.
    """
    env = os.environ if env is None else env
    coordinator = _pick(cfg.coordinator_address, "coordinator_address", env, ENV_COORDINATOR)
    method = _method(_mode(cfg, env), coordinator[0] is not None, env)
    if method in ("single", "tpu"):
        return JoinPlan(method)  # 'tpu': JAX reads the slice's workers from the TPU metadata
    address = _coordinator_address(method, coordinator, env)
    num_processes, process_id = _process_numbers(cfg, env, address)
    return JoinPlan(method, address, num_processes, process_id, _local_device_ids(cfg, env))


def _coordinator_address(method: str, picked: tuple, env: Mapping[str, str]) -> str:
    address, source = picked
    if method == "slurm" and not _in_slurm_step(env):
        raise DistributedConfigError(
            f"{ENV_MODE}=slurm (or DistributedConfig.mode) but this is not a SLURM step: SLURM_JOB_ID, "
            "SLURM_STEP_NODELIST, SLURM_PROCID and SLURM_NTASKS must be set (launch with srun)")
    if address is None and method == "explicit":
        raise DistributedConfigError(f"mode 'explicit' needs a coordinator: set {ENV_COORDINATOR}=host:port or "
                                     "--gin.DistributedConfig.coordinator_address='host:port'")
    if address is None:
        address, source = _slurm_coordinator(env), "SLURM_STEP_NODELIST"
    return _check_address(str(address), source)


def _process_numbers(cfg: DistributedConfig, env: Mapping[str, str], address: str) -> tuple[int, int]:
    """(num_processes, process_id); inside srun SLURM's task count and rank fill in."""
    slurm_num, slurm_id = ("SLURM_NTASKS", "SLURM_PROCID") if _in_slurm_step(env) else (None, None)
    num, num_src = _pick(cfg.num_processes, "num_processes", env, ENV_NUM_PROCESSES, slurm_num)
    pid, pid_src = _pick(cfg.process_id, "process_id", env, ENV_PROCESS_ID, slurm_id)
    missing = [name for name, value in ((f"{ENV_NUM_PROCESSES} (DistributedConfig.num_processes)", num),
                                        (f"{ENV_PROCESS_ID} (DistributedConfig.process_id)", pid)) if value is None]
    if missing:
        raise DistributedConfigError(f"the coordinator is {address} but {' and '.join(missing)} is not set; "
                                     "every process needs all three")
    num, pid = _int_setting(num, num_src), _int_setting(pid, pid_src)
    if num < 1 or not 0 <= pid < num:
        raise DistributedConfigError(f"{pid_src}={pid} must be in [0, {num_src}={num})")
    return num, pid


def _local_device_ids(cfg: DistributedConfig, env: Mapping[str, str]) -> tuple[int, ...] | None:
    ids, source = _pick(cfg.local_device_ids, "local_device_ids", env, ENV_LOCAL_DEVICE_IDS)
    return None if ids is None else _device_ids(ids, source)


def initialize(cfg: DistributedConfig | None = None) -> JoinPlan:
    """Join the job described by `cfg` + environment (no-op for one process, or if joined).

    Must run before any JAX device use. Returns the JoinPlan it followed. Raises
    DistributedConfigError for bad settings (see `resolve`) or when joining fails (e.g. a
    process misses the coordinator within `cfg.initialization_timeout_s` seconds).
    """
    cfg = cfg or DistributedConfig()
    plan = resolve(cfg)
    if not plan.joins or jax.distributed.is_initialized():
        return plan
    # CPU devices need a collectives implementation to talk across processes (tests,
    # CPU clusters); harmless where the accelerator brings its own.
    jax.config.update("jax_cpu_collectives_implementation", cfg.cpu_collectives)
    try:
        if plan.method == "tpu":
            jax.distributed.initialize(initialization_timeout=cfg.initialization_timeout_s)
        else:
            jax.distributed.initialize(
                coordinator_address=plan.coordinator_address, num_processes=plan.num_processes,
                process_id=plan.process_id, local_device_ids=plan.local_device_ids,
                cluster_detection_method="deactivate", initialization_timeout=cfg.initialization_timeout_s)
    except RuntimeError as err:
        raise DistributedConfigError(
            f"could not join the {plan.method} job ({plan}): {err}. jax.distributed must be initialized before "
            "any JAX device use; every process must reach the coordinator within "
            "DistributedConfig.initialization_timeout_s") from err
    _quiet_other_processes()
    log.info("Joined a %d-process job (%s) as process %d with %d local devices", jax.process_count(),
             plan.method, jax.process_index(), jax.local_device_count())
    return plan


def _quiet_other_processes() -> None:
    """Progress and info logs from process 0 only; warnings and errors from every process."""
    if jax.process_index() != 0:
        log.setLevel(logging.WARNING)
