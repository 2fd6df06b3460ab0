"""Image files to input arrays, as Darknet (``darknet_image``) and Caffe (``caffe_image``) load them.

Shared by the evaluators, the ``forward`` and ``detect`` commands and calibration.
"""
