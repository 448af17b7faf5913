"""What several commands share: turning the library's input errors into exit code 2, and a
quiet start on a machine without an accelerator (no CUDA/TPU probe log lines)."""
from __future__ import annotations

import contextlib
import functools
import glob
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile


def reports(prog: str, *errors: type[BaseException]):
    """Decorates `main(argv) -> int`: any of `errors` prints `prog: Type: message` on stderr
    and exits 2 (bad input) instead of a traceback."""
    def wrap(fn):
        @functools.wraps(fn)
        def main(argv) -> int:
            try:
                return fn(argv)
            except errors as err:
                print(f"{prog}: {type(err).__name__}: {err}", file=sys.stderr)
                return 2
        return main
    return wrap


# --- a quiet start -------------------------------------------------------------------------

# Device nodes of the accelerators JAX can use (NVIDIA, AMD ROCm, TPU v2-v4 `accel`, TPU v5+ vfio).
ACCELERATOR_DEVICE_GLOBS = ("/dev/nvidia[0-9]*", "/dev/kfd", "/dev/accel[0-9]*", "/dev/vfio/[0-9]*")

# Lines TensorFlow, XLA and libtpu print while probing for a GPU/TPU that is not there. They
# are written from C++ before absl logging is initialised (so TF_CPP_MIN_LOG_LEVEL does not
# hide all of them); matched whole-line so that any other message still reaches the user.
PROBE_LINE_PATTERNS = tuple(re.compile(p) for p in (
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"Logging before InitGoogle\(\) is written to STDERR",
    r"cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine",
    r"failed call to cuInit",
    r"Unable to register cu(DNN|FFT|BLAS) factory",
    r"computation placer already registered",
    r"cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized",
    r"To enable the following instructions: .* in other operations, rebuild TensorFlow",
    r"oneDNN custom operations are on",
    r"Unable to initialize backend '(cuda|rocm|tpu)'",
    r"An NVIDIA GPU may be present on this machine, but a CUDA-enabled jaxlib is not installed",
    r"Failed to find host bounds for accelerator type",
    r"could not determine TPU (accelerator type|worker hostnames)",
    r"unexpected worker hostname .* from env var TPU_WORKER",
    r"=== Source Location Trace: ===",
    r"libtpu_init_utils\.cc:\d+",
))


def has_accelerator() -> bool:
    """Whether this machine exposes a GPU or TPU device node (see ACCELERATOR_DEVICE_GLOBS)."""
    return any(glob.glob(pattern) for pattern in ACCELERATOR_DEVICE_GLOBS)


def is_probe_line(line: str) -> bool:
    """A known accelerator-probe log line (PROBE_LINE_PATTERNS), not an error of the run."""
    return any(p.search(line) for p in PROBE_LINE_PATTERNS)


def _drop_probe_records(record: logging.LogRecord) -> bool:
    return not is_probe_line(record.getMessage())


@contextlib.contextmanager
def filtered_stderr():
    """Sends file descriptor 2 (C++ logs too) to a temporary file for the block, then writes
    back every line that is not a known probe line: real errors still reach the user."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not is_probe_line(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Runs the first `import tensorflow` (and TF's device probe) inside `filtered_stderr`, so
    commands that never import TensorFlow pay nothing."""

    _busy = False

    def find_spec(self, name, path, target=None):
        # Stays on sys.meta_path until TensorFlow is executed: libraries probe availability with
        # `importlib.util.find_spec("tensorflow")` without importing it (orbax's dependencies do).
        if name != "tensorflow" or self._busy:
            return None
        self._busy = True  # lets the real finders answer the nested lookup
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._busy = False
        if spec is None or spec.loader is None:
            return spec
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        if self in sys.meta_path:
            sys.meta_path.remove(self)  # once
        with filtered_stderr():
            self._loader.exec_module(module)
            # TF's CUDA platform is initialised lazily (cuInit at the first op): do it here.
            module.config.list_physical_devices("GPU")


def quiet_start(environ=os.environ) -> None:
    """Before TensorFlow or JAX initialise: on a machine without a GPU/TPU device node, pin
    JAX to the CPU (unless JAX_PLATFORMS is set) so it does not probe for CUDA or libtpu, and
    filter the probe lines TensorFlow prints on import. Other log lines are kept."""
    if has_accelerator():
        return
    environ.setdefault("JAX_PLATFORMS", "cpu")
    logging.getLogger("jax._src.xla_bridge").addFilter(_drop_probe_records)  # a no-op when already added
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())
