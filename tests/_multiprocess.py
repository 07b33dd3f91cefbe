"""The one harness for multi-process tests: launch a script under torchrun (or `accelerate launch --multi_gpu`)
with N CPU processes (gloo), one launch at a time across the whole test session.

    ok, stderr_tail = launch("tests/test_distributed.py", ["OUT_DIR"], nproc=2)

Under `pytest -n 2` two workers could otherwise start launches together: each launch holds a file lock for its
duration, so multi-process tests never overlap (two 2-process jobs on 2 cores time out rather than fail). On a
timeout the whole process group is killed (killing torchrun alone leaves its workers behind). A failed launch is
retried once by `launch_with_retry`, showing both stderr tails if both fail: one launch in this suite's history hung
in gloo and never reproduced.
"""

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]
LOCK = FileLock(os.path.join(tempfile.gettempdir(), "collm_hf_tests_multiprocess.lock"))
ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def command(script, args, nproc: int = 2, launcher: str = "torchrun") -> list[str]:
    """The command line that starts `script args...` in `nproc` processes with `launcher`."""
    script = str(script if Path(script).is_absolute() else ROOT / script)
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                script, *map(str, args)]
    if launcher == "accelerate":
        # Without --multi_gpu accelerate starts one process on a CPU machine; --cpu cannot go with --multi_gpu: the
        # script asks for the CPU itself (`TrainingArguments(use_cpu=True)`, `PartialState(cpu=True)`), and gets gloo.
        return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", "0", script, *map(str, args)]
    raise ValueError(f"unknown launcher {launcher!r}")


def launch(script, args=(), nproc: int = 2, launcher: str = "torchrun", timeout: float = 180.0,
           env: dict | None = None) -> tuple[bool, str]:
    """Run `script` in `nproc` processes; (succeeded, the tail of stdout + stderr)."""
    full_env = dict(os.environ, **ENV, **(env or {}))
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full_env.get("PYTHONPATH")]))
    with LOCK:
        process = subprocess.Popen(command(script, args, nproc, launcher), env=full_env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True, cwd=ROOT)
        try:
            out, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, _ = process.communicate()
            return False, f"timed out after {timeout:.0f} s\n{out[-4000:]}"
    return process.returncode == 0, out[-4000:]


def launch_with_retry(script, args=(), **kwargs) -> str:
    """`launch`, retried once; raises AssertionError with both output tails when both fail."""
    succeeded, first = launch(script, args, **kwargs)
    if succeeded:
        return first
    succeeded, second = launch(script, args, **kwargs)
    assert succeeded, f"first launch:\n{first}\nsecond launch:\n{second}"
    return second
