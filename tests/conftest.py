"""Test setup: CPU only, 8 fake devices for sharding tests, a temp data dir."""
import os

# Must be set before jax is imported anywhere. SLM_JAX_TEST_GPU=1 (on a GPU machine) keeps
# the real accelerator for the `gpu` tier; everything else runs on 8 fake CPU devices.
GPU_RUN = os.environ.get("SLM_JAX_TEST_GPU") == "1"
if not GPU_RUN:
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


def pytest_collection_modifyitems(config, items):
    """`gpu` tests skip unless SLM_JAX_TEST_GPU=1 and JAX sees a GPU."""
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    reason = "needs a GPU: run `SLM_JAX_TEST_GPU=1 pytest -m gpu tests` on a GPU machine"
    if GPU_RUN:
        import jax
        if any(d.platform == "gpu" for d in jax.devices()):
            return
        reason = f"SLM_JAX_TEST_GPU=1 but JAX sees no GPU ({jax.devices()[0].platform})"
    for item in gpu_items:
        item.add_marker(pytest.mark.skip(reason=reason))
