"""Reading lm-eval results: where an evaluation's results JSON is, and its metric rows."""

from __future__ import annotations

from pathlib import Path


def results_file(location: str | Path) -> Path | None:
    """The results JSON of an evaluation: ours (``results.json``) or lm-eval's (newest ``results_*.json``)."""
    location = Path(location)
    if location.is_file():
        return location
    if (location / "results.json").is_file():
        return location / "results.json"
    found = sorted(location.rglob("results*.json"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def metric_rows(results: dict) -> list[dict]:
    """Flatten lm-eval results into rows of task, metric, filter, score, stderr, n."""
    rows = []
    for task, metrics in results.get("results", {}).items():
        n = results.get("n-samples", {}).get(task, {}).get("effective")
        for key, value in metrics.items():
            if "," not in key or "_stderr," in key or not isinstance(value, (int, float)):
                continue
            metric, filter_name = key.split(",", 1)
            stderr = metrics.get(f"{metric}_stderr,{filter_name}")
            rows.append(
                {
                    "task": task,
                    "metric": metric,
                    "filter": filter_name,
                    "score": float(value),
                    "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
                    "n": n,
                }
            )
    return rows
