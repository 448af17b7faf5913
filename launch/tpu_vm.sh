#!/usr/bin/env bash
# Train on a Cloud TPU VM or pod slice: create (or reuse) it, install slm_jax on every
# worker, start `slm-jax train` on all workers at once, stream process 0's log.
#
#   launch/tpu_vm.sh --name=NAME --zone=ZONE --accelerator-type=v5litepod-16 \
#       [--project=P] [--queued] [--spot] [--version=RUNTIME] [--repo=GIT_URL [--branch=REF]] \
#       [--skip-create] [--skip-install] [--setup-only] [--no-stream] [--stop] [--dry-run] \
#       [--] [slm-jax train flags, e.g. --gin_file=gin/runs/tpu_v5e_1b.gin --gin.MODEL_DIR="'gs://b/run'"]
#
# Every worker runs one process; JAX finds the others itself (SLM_JAX_DISTRIBUTED=tpu).
# MODEL_DIR must be a gs:// path that every worker can write (checkpoints are written
# by all processes). --stop sends SIGTERM to the run on every worker: it saves a
# checkpoint at a step all processes agree on and exits 0; running this script again
# (with --skip-create --skip-install) resumes it.
# --setup-only creates and installs, and trains nothing (e.g. before launch/tpu_vm_units.sh).
# --dry-run prints the gcloud commands instead of running them.
set -euo pipefail

NAME="${TPU_NAME:-}"
ZONE="${TPU_ZONE:-}"
PROJECT="${TPU_PROJECT:-}"
ACCELERATOR=""
VERSION=""
QUEUED=0
SPOT=0
REPO_URL=""
BRANCH="main"
SKIP_CREATE=0
SKIP_INSTALL=0
STREAM=1
STOP=0
SETUP_ONLY=0
DRY_RUN="${DRY_RUN:-0}"
REMOTE_DIR="slm_jax"           # relative to the remote home directory
LOG="slm_jax_train.log"        # on every worker, in the remote home directory
TRAIN_ARGS=()

die() { echo "tpu_vm.sh: $*" >&2; exit 2; }

while (($#)); do
  case "$1" in
    --name=*) NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --accelerator-type=*) ACCELERATOR="${1#*=}" ;;
    --version=*) VERSION="${1#*=}" ;;
    --queued) QUEUED=1 ;;
    --spot) SPOT=1 ;;
    --repo=*) REPO_URL="${1#*=}" ;;
    --branch=*) BRANCH="${1#*=}" ;;
    --skip-create) SKIP_CREATE=1 ;;
    --skip-install) SKIP_INSTALL=1 ;;
    --no-stream) STREAM=0 ;;
    --stop) STOP=1 ;;
    --dry-run) DRY_RUN=1 ;;
    --setup-only) SETUP_ONLY=1 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    --) shift; TRAIN_ARGS+=("$@"); break ;;
    *) TRAIN_ARGS+=("$1") ;;
  esac
  shift
done

[[ -n "$NAME" ]] || die "--name=NAME (or \$TPU_NAME) is required"
[[ -n "$ZONE" ]] || die "--zone=ZONE (or \$TPU_ZONE) is required"
if [[ " ${TRAIN_ARGS[*]-} " != *" --gin_file="* ]]; then
  TRAIN_ARGS=(--gin_file=gin/runs/tpu_v5e_1b.gin "${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"}")
fi

# The TPU software image for an accelerator family (Cloud TPU docs, "TPU software versions").
default_version() {
  case "$1" in
    v4-*) echo "tpu-ubuntu2204-base" ;;
    v5litepod-*|v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    *) die "--accelerator-type=$1: unknown family; pass --version=RUNTIME_VERSION" ;;
  esac
}

# Hosts (= workers = JAX processes) of a slice: v4/v5p count TensorCores (2 per chip),
# 4 chips per host; v5e/v6e count chips, up to 8 on one host, else 4 per host.
num_workers() {
  local family="${1%-*}" n="${1##*-}"
  case "$family" in
    v4|v5p) echo $(( n <= 8 ? 1 : n / 8 )) ;;
    *) echo $(( n <= 8 ? 1 : n / 4 )) ;;
  esac
}

GCLOUD=(gcloud compute tpus)
LOCATION=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && LOCATION+=(--project="$PROJECT")

# quote / show: printing a pasteable command line
source "$(dirname "${BASH_SOURCE[0]}")/shell_words.sh"

# Print (dry run) or run one command.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then show "$@"; else "$@"; fi
}

on_workers() {  # on_workers WORKER COMMAND: one shell command on worker(s) over gcloud ssh
  run "${GCLOUD[@]}" tpu-vm ssh "$NAME" "${LOCATION[@]}" --worker="$1" --command="$2"
}

exists() {
  [[ "$DRY_RUN" == 1 ]] && return 1   # a dry run shows the create commands
  "${GCLOUD[@]}" tpu-vm describe "$NAME" "${LOCATION[@]}" >/dev/null 2>&1
}

create() {
  [[ -n "$ACCELERATOR" ]] || die "--accelerator-type is required to create $NAME (e.g. v5litepod-16, v4-16)"
  local version="${VERSION:-$(default_version "$ACCELERATOR")}"
  local spot=()
  [[ "$SPOT" == 1 ]] && spot=(--spot)
  echo "# $NAME: $ACCELERATOR, $(num_workers "$ACCELERATOR") worker(s), runtime $version"
  if [[ "$QUEUED" == 1 ]]; then
    run "${GCLOUD[@]}" queued-resources create "$NAME" --node-id="$NAME" "${LOCATION[@]}" \
      --accelerator-type="$ACCELERATOR" --runtime-version="$version" "${spot[@]+"${spot[@]}"}"
    wait_until_active
  else
    run "${GCLOUD[@]}" tpu-vm create "$NAME" "${LOCATION[@]}" \
      --accelerator-type="$ACCELERATOR" --version="$version" "${spot[@]+"${spot[@]}"}"
  fi
}

wait_until_active() {  # queued resources are granted when capacity frees up
  local state_cmd=("${GCLOUD[@]}" queued-resources describe "$NAME" "${LOCATION[@]}" --format='value(state.state)')
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "# wait until this prints ACTIVE:"; run "${state_cmd[@]}"; return
  fi
  local state
  while state="$("${state_cmd[@]}")" && [[ "$state" != ACTIVE ]]; do
    [[ "$state" == FAILED || "$state" == SUSPENDED ]] && die "queued resource $NAME is $state"
    echo "queued resource $NAME: $state; waiting"; sleep 60
  done
}

copy_checkout() {  # this working tree (tracked + untracked, not ignored files) to every worker
  local archive="/tmp/slm_jax_${NAME}.tar.gz"
  local root; root="$(cd "$(dirname "$0")/.." && pwd)"
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "(cd $(quote "$root") && git ls-files -co --exclude-standard -z | tar czf $archive --null -T -)"
  else
    (cd "$root" && git ls-files -co --exclude-standard -z | tar czf "$archive" --null -T -)
  fi
  run "${GCLOUD[@]}" tpu-vm scp "$archive" "$NAME":slm_jax.tar.gz "${LOCATION[@]}" --worker=all
}

install() {
  local fetch
  if [[ -n "$REPO_URL" ]]; then
    fetch="(test -d $REMOTE_DIR/.git || git clone $(quote "$REPO_URL") $REMOTE_DIR)"
    fetch+=" && git -C $REMOTE_DIR fetch origin $(quote "$BRANCH")"
    fetch+=" && git -C $REMOTE_DIR checkout --force FETCH_HEAD"
  else
    copy_checkout
    fetch="mkdir -p $REMOTE_DIR && tar xzf slm_jax.tar.gz -C $REMOTE_DIR"
  fi
  # TPU VM images ship Python 3.10; slm_jax needs 3.11+.
  local python="(command -v python3.11 >/dev/null"
  python+=" || (sudo apt-get update -qq && sudo apt-get install -y -qq python3.11 python3.11-venv))"
  local venv="python3.11 -m venv $REMOTE_DIR/.venv && $REMOTE_DIR/.venv/bin/pip install -q -U pip"
  venv+=" && $REMOTE_DIR/.venv/bin/pip install -q -e ./$REMOTE_DIR 'jax[tpu]>=0.10.2,<0.12'"
  on_workers all "set -e; $fetch && $python && $venv"
}

train() {
  local args; args="$(show "${TRAIN_ARGS[@]}")"
  # nohup: the run outlives this ssh session; every worker logs to ~/$LOG.
  local env="SLM_JAX_DISTRIBUTED=tpu TF_CPP_MIN_LOG_LEVEL=2"
  on_workers all "cd $REMOTE_DIR && $env nohup .venv/bin/slm-jax train $args > ~/$LOG 2>&1 < /dev/null &"
  if [[ "$STREAM" == 1 ]]; then
    echo "# process 0's log (Ctrl-C stops streaming, not the run):"
    on_workers 0 "tail -n +1 -F ~/$LOG"
  fi
}

if [[ "$STOP" == 1 ]]; then
  on_workers all "pkill -TERM -f 'slm-jax train' || true"
  exit 0
fi
if [[ "$SKIP_CREATE" == 0 ]]; then
  if exists; then echo "# reusing TPU VM $NAME"; else create; fi
fi
if [[ "$SKIP_INSTALL" == 0 ]]; then
  install
fi
[[ "$SETUP_ONLY" == 1 ]] || train
