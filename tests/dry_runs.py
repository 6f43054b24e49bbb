"""`snakemake -n` without the import cost: a server process that has imported snakemake and its plugins once forks
one child per dry run, which runs snakemake's command-line entry point (what the `snakemake` command calls) in the
workflow folder with the caller's environment. Imports take most of a dry run's time; as many dry runs as there are
CPUs run at once. tests/test_bad_inputs.py::test_the_snakemake_command_prints_the_same checks it against the command.

The server imports what the Snakefile imports too (koaml's parse-time modules: no torch, no Hugging Face library);
what reads the environment when imported (huggingface_hub's constants, datasets) is imported by each child, never by
the server, so that a test's HF_HOME or offline switches reach it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

FRESH_IN_EACH_CHILD = {"huggingface_hub", "datasets", "transformers", "lm_eval", "torch"}


@dataclass(frozen=True)
class DryRun:
    """One finished dry run: snakemake's exit status and its output (stdout and stderr together)."""

    returncode: int
    stdout: str


class DryRunServer:
    """The client: ``run([(workdir, args, env), ...])`` returns their DryRuns in order."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=tempfile.gettempdir(),
        )

    def run(self, requests: list[tuple[Path, list[str], dict[str, str]]]) -> list[DryRun]:
        with tempfile.TemporaryDirectory() as logs:
            batch = [
                {"cwd": str(cwd), "args": list(args), "env": dict(env), "log": f"{logs}/{i}.log"}
                for i, (cwd, args, env) in enumerate(requests)
            ]
            self.proc.stdin.write(json.dumps(batch) + "\n")
            self.proc.stdin.flush()
            reply = self.proc.stdout.readline()
            if not reply:
                raise RuntimeError(f"the dry-run server died (exit status {self.proc.wait()})")
            return [DryRun(code, Path(r["log"]).read_text()) for code, r in zip(json.loads(reply), batch, strict=True)]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _child(request: dict) -> None:
    """In a forked child: run snakemake's command line as the request says, then exit with its status."""
    from snakemake.cli import main

    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1)
    os.dup2(log, 2)
    code = 1
    try:
        main(request["args"])
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    """Read batches of requests (one JSON list per line), run each in a forked child, answer their exit statuses."""
    # snakemake, what its source cache imports on every run, and what workflow/rules/common.smk imports
    import smart_open  # noqa: F401
    import snakemake.api
    import snakemake.dag  # noqa: F401
    from snakemake.cli import get_argument_parser

    import koaml.config
    import koaml.fetch
    import koaml.integrity
    import koaml.resources
    import koaml.train  # noqa: F401

    get_argument_parser()  # collects the plugins, once
    stale = FRESH_IN_EACH_CHILD & {name.split(".")[0] for name in sys.modules}
    assert not stale, f"the dry-run server imported {stale}: children would not see their environment"
    width = os.cpu_count() or 1
    for line in sys.stdin:
        batch, codes, running = json.loads(line), {}, {}
        for i, request in enumerate(batch):
            if len(running) >= width:
                pid, status = os.wait()
                codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
            pid = os.fork()
            if pid == 0:
                _child(request)
            running[pid] = i
        while running:
            pid, status = os.wait()
            codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
        print(json.dumps([codes[i] for i in range(len(batch))]), flush=True)


if __name__ == "__main__":
    serve()
