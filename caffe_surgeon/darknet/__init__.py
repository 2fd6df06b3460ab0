"""Darknet I/O: ``cfg`` (the text), ``weights`` (the binary file), ``reader`` and ``writer``.

Mirrors :mod:`caffe_surgeon.caffe`; the public face for users is the top-level
``darknet_io`` package (and :func:`caffe_surgeon.load` / :func:`caffe_surgeon.save`).
"""
