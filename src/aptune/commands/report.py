"""``aptune report RUN``: write ``RUN/report.html`` (see ``engine/report_html.py``)."""

from __future__ import annotations

from pathlib import Path

from aptune.engine.report_html import write_report


def report(run: Path) -> Path:
    """Write the run's self-contained HTML report; -> its path."""
    return write_report(Path(run))
