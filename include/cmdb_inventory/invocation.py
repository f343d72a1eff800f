"""Which Airflow command this process runs: an attended `airflow dags test` changes a few behaviours."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def running_dags_test(argv: Sequence[str] | None = None) -> bool:
    """Whether this process is Airflow's ``airflow dags test`` command (``python -m airflow`` included)."""
    words = [a for a in (sys.argv if argv is None else argv)[1:] if not a.startswith("-")]
    return words[:2] == ["dags", "test"]
