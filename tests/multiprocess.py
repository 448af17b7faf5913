"""Run `slm-jax` as a multi-process JAX job on this machine (loopback coordinator, CPU devices)."""
import os
import socket
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(process_id: int, num_processes: int, port: int, devices: int) -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                SLM_JAX_COORDINATOR=f"127.0.0.1:{port}", SLM_JAX_NUM_PROCESSES=str(num_processes),
                SLM_JAX_PROCESS_ID=str(process_id))


def start_job(args, num_processes=2, devices_per_process=4):
    """Popen one `python -m slm_jax.cli ARGS` per process; they join through SLM_JAX_* variables."""
    port = free_port()
    return [subprocess.Popen([sys.executable, "-m", "slm_jax.cli", *args], cwd=REPO, text=True,
                             env=process_env(i, num_processes, port, devices_per_process),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for i in range(num_processes)]


def finish_job(procs, timeout=300):
    """(returncode, stdout, stderr) per process; a job that hangs is killed, never left behind."""
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            results.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def run_job(args, **kwargs):
    results = finish_job(start_job(args, **kwargs))
    for i, (rc, _, err) in enumerate(results):
        assert rc == 0, f"process {i} of {' '.join(args)} exited {rc}:\n{err[-4000:]}"
    return results
