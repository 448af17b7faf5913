#!/usr/bin/env bash
# Train on this machine: one process driving every local device (CPU, GPUs, or a
# single-host TPU VM), or a rehearsal of a multi-host job as N CPU processes.
#
#   launch/local.sh [--gin_file=gin/runs/demo_cpu.gin] [more slm-jax train flags]
#   launch/local.sh --processes=2 --devices-per-process=4 --gin_file=gin/runs/test_cpu.gin ...
#   launch/local.sh --dry-run ...          print the commands, run nothing
#
# With --processes=N > 1 the processes join through a loopback coordinator on CPU
# devices, exactly as hosts of a pod would (process 0 logs here; process i > 0 to
# local_process_<i>.log in the checkout). SIGTERM or Ctrl-C is passed to
# every process: they save a checkpoint at a common step and exit 0, and running the
# same command again resumes.
set -euo pipefail

PROCESSES=1
DEVICES=""
DRY_RUN="${DRY_RUN:-0}"
TRAIN_ARGS=()
for arg in "$@"; do
  case "$arg" in
    --processes=*) PROCESSES="${arg#*=}" ;;
    --devices-per-process=*) DEVICES="${arg#*=}" ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) TRAIN_ARGS+=("$arg") ;;
  esac
done
[[ "$PROCESSES" =~ ^[1-9][0-9]*$ ]] || { echo "local.sh: --processes=$PROCESSES must be a positive integer" >&2; exit 2; }
if [[ " ${TRAIN_ARGS[*]-} " != *" --gin_file="* ]]; then
  TRAIN_ARGS=(--gin_file=gin/runs/demo_cpu.gin "${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"}")
fi

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="$ROOT/.venv/bin/slm-jax"
[[ -x "$BIN" ]] || BIN="slm-jax"
cd "$ROOT"

show() { printf '%q ' "$@"; echo; }

if [[ "$PROCESSES" == 1 ]]; then
  ENV=()
  [[ -n "$DEVICES" ]] && ENV=(env JAX_PLATFORMS=cpu "XLA_FLAGS=--xla_force_host_platform_device_count=$DEVICES")
  CMD=("${ENV[@]+"${ENV[@]}"}" "$BIN" train "${TRAIN_ARGS[@]}")
  if [[ "$DRY_RUN" == 1 ]]; then show "${CMD[@]}"; exit 0; fi
  exec "${CMD[@]}"
fi

PORT="${SLM_JAX_COORDINATOR_PORT:-$((20000 + RANDOM % 20000))}"
PIDS=()
stop_all() { kill -TERM "${PIDS[@]}" 2>/dev/null || true; }
trap stop_all TERM INT
for ((i = 0; i < PROCESSES; i++)); do
  CMD=(env JAX_PLATFORMS=cpu "XLA_FLAGS=--xla_force_host_platform_device_count=${DEVICES:-1}"
       SLM_JAX_COORDINATOR="127.0.0.1:$PORT" SLM_JAX_NUM_PROCESSES="$PROCESSES" SLM_JAX_PROCESS_ID="$i"
       "$BIN" train "${TRAIN_ARGS[@]}")
  if [[ "$DRY_RUN" == 1 ]]; then
    redirect=""; ((i > 0)) && redirect="> local_process_$i.log 2>&1 "
    echo "$(show "${CMD[@]}")$redirect&"
    continue
  fi
  if ((i == 0)); then "${CMD[@]}" & else "${CMD[@]}" > "local_process_$i.log" 2>&1 & fi
  PIDS+=($!)
done
[[ "$DRY_RUN" == 1 ]] && exit 0
STATUS=0
for pid in "${PIDS[@]}"; do
  # `wait` returns early (> 128) when a trapped signal arrives: wait again for the real exit
  # (an exited but unreaped process still answers kill -0).
  while true; do
    set +e; wait "$pid"; rc=$?; set -e
    ((rc > 128)) && kill -0 "$pid" 2>/dev/null && continue
    break
  done
  ((rc == 0)) || STATUS=$rc
done
exit "$STATUS"
