"""Caffe layer specs: shapes, weight arrays, counts, channel flow, roles, synthetic weights.

Shape rules follow BVLC Caffe's ``Reshape`` methods (and the SSD, Xilinx and
darknet2caffe forks for their layers). Counting follows vai_p_caffe's
``net_counter``: conv ops = out_C x out_H x out_W x (2 x in_C/group x kH x kW + 1),
BatchNorm counts 4C + 1 params and no ops, InnerProduct is left out of totals.

One module per family; importing this package registers every Caffe layer type.
"""
from . import metrics, pointwise, sources, ssd, structure, weighted  # noqa: F401  (register)
