"""The vai_p workflow: the vendor's config files in, the vendor's reports out.

- :mod:`.config` reads ``vai_p_caffe -config config.prototxt`` and the
  ``[pruning]`` INI file of ``vai_p_darknet`` into checked dataclasses.
- :mod:`.report` formats the ``prune`` summary table exactly as the vendor's
  logs show it, and writes the ``ana`` sensitivity results as a text table,
  CSV and PNG plot.
"""
from __future__ import annotations

from .config import (CaffeConfig, DarknetPruningConfig, read_caffe_config,
                     read_darknet_pruning)
from .report import (PruneSummary, SensitivityRow, SensitivityTable, format_rate,
                     format_prune_summary, format_sensitivity, write_sensitivity_csv,
                     write_sensitivity_plot, write_sensitivity_table)

__all__ = [
    "CaffeConfig", "DarknetPruningConfig", "read_caffe_config", "read_darknet_pruning",
    "PruneSummary", "SensitivityRow", "SensitivityTable", "format_rate",
    "format_prune_summary", "format_sensitivity", "write_sensitivity_csv",
    "write_sensitivity_plot", "write_sensitivity_table",
]
