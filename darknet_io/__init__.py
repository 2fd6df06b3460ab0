"""Read and write Darknet models (``.cfg`` + ``.weights``) as a :class:`Graph`.

The public face of :mod:`caffe_surgeon.darknet`, where the code lives (``cfg``:
the cfg text, ``weights``: the ``.weights`` file, ``reader``, ``writer``); see
:mod:`caffe_surgeon.darknet.reader` for the IR conventions.
"""
from caffe_surgeon.darknet.reader import read_darknet, weight_layouts
from caffe_surgeon.darknet.writer import write_darknet

__all__ = ["read_darknet", "write_darknet", "weight_layouts"]
