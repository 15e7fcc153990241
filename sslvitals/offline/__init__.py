"""Offline analysis: score saved checkpoints, correlate with downstream results, plot, tabulate.

Sub-modules (each a ``sslvitals`` sub-command): :mod:`~sslvitals.offline.score`,
:mod:`~sslvitals.offline.correlate`, :mod:`~sslvitals.offline.plot`,
:mod:`~sslvitals.offline.table`; :mod:`~sslvitals.offline.io` reads and writes the long-format
table.
"""
from sslvitals.offline.io import load_results
from sslvitals.offline.plot import plot_metric_vs_update
from sslvitals.offline.table import format_table

__all__ = ["load_results", "format_table", "plot_metric_vs_update"]
