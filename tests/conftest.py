"""Test setup: CPU only, 8 fake devices for sharding tests, a temp data dir."""
import os

# Must be set before jax is imported anywhere.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Several tests compile for TPU topologies through libtpu (no TPU touched); with pytest -n
# they run in parallel processes, which libtpu's single-process lockfile would refuse.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory):
    """A per-session data dir holding the generated demo corpus (built once)."""
    path = tmp_path_factory.mktemp("slm_jax_data")
    os.environ["SLM_JAX_DATA_DIR"] = str(path)
    return path
