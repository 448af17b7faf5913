"""Stop for a preemption notice (SIGTERM) at a step every process agrees on.

TPU VM maintenance events, spot/preemptible reclaims and SLURM time limits send
SIGTERM some seconds before the kill. The loop asks `should_stop(step)` after every
step; when it says yes, every process saves the same step and exits 0, and the next
launch resumes from it exactly.

Multi-process: JAX's preemption sync manager (started by `jax.distributed.initialize`)
catches SIGTERM in C++, tells the coordinator, and the coordinator picks the step after
the furthest one any process has reached; `multihost_utils.reached_preemption_sync_point`
is then true on every process at that same step, even if only one process got the
signal. Checked on CPU with 2 processes over gloo. It costs nothing per step (a local
check; the agreement happens in the background), unlike an all-reduce of a stop flag,
which would make every step wait for the slowest host.

Single process: there is no coordinator, so a Python SIGTERM handler sets a flag and
the next step stops.
"""
from __future__ import annotations

import logging
import signal

import jax
from jax.experimental import multihost_utils

log = logging.getLogger("slm_jax")


def _sync_manager_running() -> bool:
    from jax._src import distributed  # the manager has no public accessor
    return distributed.global_state.preemption_sync_manager is not None


class PreemptionWatcher:
    """`should_stop(step)`: whether to checkpoint and stop after `step` (call it every step)."""

    def __init__(self):
        self._requested = False
        self._installed = False
        self._previous_handler = None
        self._multi_process = jax.process_count() > 1
        if self._multi_process:
            if not _sync_manager_running():
                log.warning("jax_enable_preemption_service is off: SIGTERM will end this %d-process job "
                            "without a checkpoint", jax.process_count())
            return
        try:
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
            self._installed = True
        except ValueError:  # not the main thread: Python can only handle signals there
            log.warning("training outside the main thread: SIGTERM will end it without a checkpoint")

    def _on_sigterm(self, signum, frame):
        del signum, frame
        self._requested = True

    def should_stop(self, step: int) -> bool:
        if self._multi_process:
            return _sync_manager_running() and multihost_utils.reached_preemption_sync_point(step)
        return self._requested

    def close(self) -> None:
        """Give SIGTERM back its previous meaning (after this, it ends the process again)."""
        if self._installed:
            # None: the previous handler was not Python's (e.g. JAX's C++ notifier); default then.
            signal.signal(signal.SIGTERM, self._previous_handler or signal.SIG_DFL)
            self._installed = False

    def __enter__(self) -> "PreemptionWatcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
