"""A training job's process lifecycle: stop cleanly on SIGTERM (preemption) or when the workflow is gone, on a
non-finite loss, keep ``progress.json``, and launch data-parallel workers with torchrun."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from koaml.io import write_json

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss or gradient norm."""


class Preempted(SystemExit):
    """SIGTERM arrived (SLURM preemption or time limit); a checkpoint was saved."""

    def __init__(self, step: int):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.step = step


PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, as if the signal had killed us


# Seconds a step may still take after SIGTERM before the process exits without a new checkpoint (the last
# one is kept): within SLURM's KillWait (30 s by default) before SIGKILL. KOAML_SIGTERM_GRACE_S overrides it.
SIGTERM_GRACE_S = 20.0


# The workflow process that started this job (set by the Snakefile); training stops when it is gone.
CONTROLLER_PID_VARIABLE = "KOAML_CONTROLLER_PID"


CONTROLLER_POLL_S = 5.0


def _exit_now(why: str) -> None:
    """Exit at once with the preemption status (from a watchdog thread: the main thread is inside a step)."""
    log.warning("%s; exiting without a new checkpoint (the run resumes from its last one)", why)
    logging.shutdown()
    os._exit(PREEMPTED_EXIT_CODE)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def guard():
    """Stop on a non-finite loss or gradient norm (a diverged DPO run's loss can stay finite while its gradient
    norm is NaN); on SIGTERM (or when the workflow process that started the job is gone), save a
    checkpoint at the end of the step and stop, or exit after SIGTERM_GRACE_S if the step does not end by then;
    keep ``progress.json`` (step, loss, time left) next to the checkpoints for ``koaml status``."""
    from transformers import TrainerCallback

    class Guard(TrainerCallback):
        def __init__(self):
            self.terminated = False
            self.started: tuple[float, int] | None = None
            self.grace = threading.Timer(
                float(os.environ.get("KOAML_SIGTERM_GRACE_S", SIGTERM_GRACE_S)),
                _exit_now,
                ["the step did not end within the grace period after SIGTERM"],
            )
            self.grace.daemon = True
            signal.signal(signal.SIGTERM, self._on_sigterm)
            controller = os.environ.get(CONTROLLER_PID_VARIABLE)
            if controller and controller.isdigit():
                threading.Thread(target=_watch_controller, args=(self, int(controller)), daemon=True).start()

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = (time.monotonic(), state.global_step)

        def _on_sigterm(self, signum, frame):
            if self.terminated:
                return
            log.warning("SIGTERM: saving a checkpoint after this step, then stopping")
            self.terminated = True
            self.grace.start()

        def on_step_end(self, args, state, control, **kwargs):
            if self.terminated:
                self.grace.cancel()  # the step ended in time: the checkpoint is written, however long that takes
                control.should_save = True
                control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if state.is_world_process_zero and "loss" in logs:
                _write_progress(Path(args.output_dir), state, logs, self.started)
            _check_finite(logs, state.global_step)

    return Guard()


def _watch_controller(guard, pid: int) -> None:
    """In a thread: stop training as SIGTERM does once the workflow process ``pid`` is gone."""
    while not guard.terminated:
        time.sleep(CONTROLLER_POLL_S)
        if not _alive(pid):
            log.warning("the workflow process (pid %d) that started this job is gone", pid)
            guard._on_sigterm(signal.SIGTERM, None)


def _write_progress(folder: Path, state, logs: dict, started: tuple[float, int] | None) -> None:
    """``progress.json``: step, loss and the time left at the rate since training (re)started."""
    seconds, first = started or (time.monotonic(), 0)
    done = state.global_step - first
    rate = (time.monotonic() - seconds) / done if done > 0 else None
    progress = {
        "step": state.global_step,
        "max_steps": state.max_steps,
        "loss": logs.get("loss"),
        "eta_s": round(rate * (state.max_steps - state.global_step), 1) if rate else None,
        "updated": time.time(),
    }
    write_json(folder / "progress.json", progress)


def _check_finite(logs: dict, step: int) -> None:
    """Raise NonFiniteLossError when a logged loss or gradient norm is NaN or infinite."""
    bad = {k: logs[k] for k in ("loss", "grad_norm") if isinstance(logs.get(k), float) and not math.isfinite(logs[k])}
    if bad:
        what = ", ".join(f"{k} is {v}" for k, v in bad.items())
        raise NonFiniteLossError(
            f"{what} at step {step}: lower training.learning_rate, "
            "check the data for broken rows, or keep training.max_grad_norm > 0"
        )


def launch(argv: list[str], num_processes: int) -> None:
    """Run ``koaml train`` in ``num_processes`` data-parallel processes with torchrun. SIGTERM is passed on to
    torchrun (which passes it to the workers); torchrun gets SIGTERM too if this process dies."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_processes}"]
    proc = subprocess.Popen([*cmd, "-m", "koaml.cli", *argv], preexec_fn=_terminate_with_parent)
    signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signal.SIGTERM))
    if returncode := proc.wait():
        raise SystemExit(returncode)


def _terminate_with_parent() -> None:
    """In a child process: ask Linux for SIGTERM when the parent dies (PR_SET_PDEATHSIG); nothing elsewhere."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity: SLURM's cpus-per-task, a container's CPU set)."""
    return len(os.sched_getaffinity(0))


def is_distributed_worker() -> bool:
    return "LOCAL_RANK" in os.environ
