#!/usr/bin/env bash
# Speech units on every host of a Cloud TPU VM slice: each host is one worker of
# `slm-jax units fit|encode` (worker index/count = its JAX process index/count), reads only
# its own audio files and writes only its own shard; `units verify` then checks that every
# file was encoded exactly once, with one codebook.
#
#   launch/tpu_vm.sh --name=NAME --zone=ZONE --accelerator-type=v5litepod-16 --setup-only   (once)
#   A=(--audio=/mnt/data/wavs --features=logmel --rate_hz=25)
#   launch/tpu_vm_units.sh --name=NAME --zone=ZONE fit "${A[@]}" --out=/mnt/data/km500.npy
#   launch/tpu_vm_units.sh --name=NAME --zone=ZONE fit --from_samples --audio=/mnt/data/wavs --out=/mnt/data/km500.npy --k=500
#   launch/tpu_vm_units.sh --name=NAME --zone=ZONE encode "${A[@]}" --centroids=/mnt/data/km500.npy --out=/mnt/data/units.jsonl
#   launch/tpu_vm_units.sh --name=NAME --zone=ZONE verify --audio=/mnt/data/wavs --out=/mnt/data/units.jsonl
#   [--project=P] [--dry-run]: --dry-run prints the gcloud command and runs nothing
#
# fit and encode run on all workers at once (gcloud ... ssh --worker=all) and return when
# every worker is done; `fit --from_samples` and `verify` run on worker 0. Paths must be on a
# file system every worker mounts (e.g. a Filestore NFS share). If the ssh session drops, run
# the same step again: each worker resumes its own shard (or finds its sample written).
set -euo pipefail

NAME="${TPU_NAME:-}"
ZONE="${TPU_ZONE:-}"
PROJECT="${TPU_PROJECT:-}"
DRY_RUN="${DRY_RUN:-0}"
REMOTE_DIR="slm_jax"  # where launch/tpu_vm.sh installs, relative to the remote home directory
UNITS_ARGS=()

die() { echo "tpu_vm_units.sh: $*" >&2; exit 2; }

while (($#)); do
  case "$1" in
    --name=*) NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) UNITS_ARGS+=("$1") ;;
  esac
  shift
done

[[ -n "$NAME" ]] || die "--name=NAME (or \$TPU_NAME) is required"
[[ -n "$ZONE" ]] || die "--zone=ZONE (or \$TPU_ZONE) is required"
STEP="${UNITS_ARGS[0]-}"
[[ "$STEP" == fit || "$STEP" == encode || "$STEP" == verify ]] \
  || die "first argument after the flags: fit, encode or verify (then its slm-jax units flags), got '${STEP}'"
WORKER=all
if [[ "$STEP" == verify || " ${UNITS_ARGS[*]} " == *" --from_samples "* ]]; then
  WORKER=0
else
  UNITS_ARGS+=(--no_progress)  # every worker's output arrives interleaved: no progress bar redraws
fi

# quote / show: printing a pasteable command line
source "$(dirname "${BASH_SOURCE[0]}")/shell_words.sh"

LOCATION=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && LOCATION+=(--project="$PROJECT")
REMOTE="cd $REMOTE_DIR && TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/slm-jax units $(show "${UNITS_ARGS[@]}")"
SSH=(gcloud compute tpus tpu-vm ssh "$NAME" "${LOCATION[@]}" --worker="$WORKER" --command="$REMOTE")
echo "# $NAME: slm-jax units $STEP on worker(s) $WORKER"
if [[ "$DRY_RUN" == 1 ]]; then
  show "${SSH[@]}"
  exit 0
fi
exec "${SSH[@]}"
