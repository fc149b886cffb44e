"""Visual reports of a run, drawn from its JSON artifacts alone (no torch, no engine import):
``write_report(run_dir)`` writes a self-contained ``report.html`` and the ``report.png`` summary.
"""

from reports.data import ReportError
from reports.writer import write_report

__all__ = ["ReportError", "write_report"]
