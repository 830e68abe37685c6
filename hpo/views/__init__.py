"""What a user sees: ``hpo status``, ``hpo report``, ``hpo dashboard``, ``hpo validate``'s data summary, the results
tables every command prints, and progress bars.

Imports ``hpo.study``, ``objectives`` and ``storage``; never ``hpo.execution``: a view reads the stored study, it
runs nothing.
"""

from __future__ import annotations

from hpo.views._dashboard import check_allowed_host, serve
from hpo.views._data_summary import summarise_data, summarise_transfer
from hpo.views._progress import Progress, evaluation_bars
from hpo.views._report import figures, per_class_table, states_table, write_report
from hpo.views._status import eta, status
from hpo.views._table import (
    PER_CLASS_HEADER,
    format_cell,
    format_params,
    never_predicted_notes,
    per_class_rows,
    render,
    results_table,
    state_counts,
)

__all__ = [
    "PER_CLASS_HEADER",
    "Progress",
    "check_allowed_host",
    "eta",
    "evaluation_bars",
    "figures",
    "format_cell",
    "format_params",
    "never_predicted_notes",
    "per_class_rows",
    "per_class_table",
    "render",
    "results_table",
    "serve",
    "state_counts",
    "states_table",
    "status",
    "summarise_data",
    "summarise_transfer",
    "write_report",
]
