"""The vendor's pruning config files, read into checked dataclasses.

- :func:`read_caffe_config` (:mod:`.caffe_config`) reads ``vai_p_caffe -config
  config.prototxt`` (protobuf text format against ``proto/vai_p_config.proto``)
  into a :class:`CaffeConfig`.
- :func:`read_darknet_pruning` (:mod:`.darknet_config`) reads the ``[pruning]``
  section of the file given to ``vai_p_darknet pruner <command> cfg`` (with the
  Darknet cfg reader) into a :class:`DarknetPruningConfig`.

Both accept every field the vendor's user guide (UG1333) and the real configs
in ``zoo/caffe/xilinx_pruning`` use, plus a few of our own with plain names.
Every problem is a :class:`~caffe_surgeon.errors.ModelError` naming the file,
the line (and column for the prototxt) and the field, and listing what is
accepted there. Relative paths are resolved against the current directory, as
the vendor tools do; the text as written is kept in ``raw``.
"""
from __future__ import annotations

from ..pruning.criteria import CRITERIA
from ..pruning.plan import DEFAULT_RATIOS
from .caffe_config import PRUNER_METHODS, SSD_AP_VERSIONS, CaffeConfig, read_caffe_config
from .config_values import SCHEDULERS, MissingFile
from .darknet_config import DARKNET_CRITERIA, DarknetPruningConfig, read_darknet_pruning

__all__ = ["CaffeConfig", "read_caffe_config", "DarknetPruningConfig", "read_darknet_pruning",
           "MissingFile", "DEFAULT_RATIOS", "CRITERIA", "SCHEDULERS", "PRUNER_METHODS",
           "SSD_AP_VERSIONS", "DARKNET_CRITERIA"]
