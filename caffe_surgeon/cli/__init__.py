"""Command-line entry points: ``caffe-surgeon``, ``vai_p_caffe``, ``vai_p_darknet``."""
