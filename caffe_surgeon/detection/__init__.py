"""Detections from head outputs, and their matching and AP, as the frameworks compute them.

Here, not in the engine or in evaluation, because both reach them: the engine's
DetectionEvaluate forward and the evaluators score with ``ssd_map``; the ``detect``
command and the Darknet evaluators decode with ``darknet_boxes``.
"""
