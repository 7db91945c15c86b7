"""The run's CSV logs (``log.csv``, ``validation.csv``): rows appended as the run goes, and
rows past a checkpoint dropped when a run resumes from it (they are redone)."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

__all__ = ["append_row", "drop_rows_after"]


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` to the CSV at ``path``, with a header if the file is new."""
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def drop_rows_after(path: Path, step: int) -> None:
    """Keep the rows of the CSV at ``path`` whose ``step`` is at most ``step`` (atomically)."""
    if not path.exists():
        return
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return
    keep = [r for r in rows if int(r["step"]) <= step]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(keep)
    os.replace(tmp, path)
