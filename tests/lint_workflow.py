"""`snakemake --lint`, failing on any finding this workflow does not accept on purpose (ALLOWED, with reasons)."""

import re
import subprocess
import sys

# (rule or snakefile pattern, lint title prefix) -> why the finding does not apply here.
ALLOWED = {
    (r"rule .*", "Specify a conda environment or container"): (
        "jobs run the koaml package from the workflow's own environment (make venv / pip install -e .[ml]), "
        "the same on the login node, a GPU node and the CPU"
    ),
    (r"rule (run_config|benchmark_config|search_config|trial_config)$", "No log directive defined"): (
        "these local rules only write the resolved YAML they are given; there is nothing to log"
    ),
}


def findings(text: str) -> list[tuple[str, str]]:
    """(subject, title) of each finding in `snakemake --lint` text output."""
    found, subject = [], None
    for line in text.splitlines():
        if match := re.match(r"Lints for (rule \S+|snakefile \S+?):?(?: \(|$)", line):
            subject = match.group(1)
        elif match := re.match(r"    \* (.+?):?$", line):
            found.append((subject, match.group(1)))
    return found


def main() -> int:
    result = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], capture_output=True, text=True)
    output = result.stdout + result.stderr
    unexpected = [
        (subject, title)
        for subject, title in findings(output)
        if not any(re.match(who, subject) and title.startswith(what) for who, what in ALLOWED)
    ]
    if "Lints for" not in output and result.returncode != 0:
        print(output, file=sys.stderr)
        return 1
    for subject, title in unexpected:
        print(f"snakemake --lint: {subject}: {title}", file=sys.stderr)
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
