"""Model evaluation from the model's own data, decoded once for many evaluations.

An evaluator exposes ``feeds`` (one dict blob -> array per batch, in memory up to
a budget and past it in a mapped temporary file: :mod:`.feed_store`),
``run_args`` (what ``Executor.run`` must return) and ``score(results)``, so a
caller can run the network itself, e.g. resuming from cached prefix
activations; ``evaluate(graph)`` does the whole thing.

* :class:`CaffeEvaluator` - a TEST net's ImageData / LMDB Data layer and an
  Accuracy or loss top, averaged over ``test_iter`` batches as Caffe does.
* :class:`DarknetClassifierEvaluator` - top-k from a ``.data`` valid list, or
  top-1 agreement with the reference model (label-free).
* :class:`DarknetDetectorEvaluator` - VOC mAP@0.5 against ``labels/`` files,
  or against the reference model's detections (label-free);
  :func:`write_detector_valid` writes darknet's ``valid`` result files.
"""
from .base import Evaluator
from .caffe_eval import CaffeEvaluator
from .darknet_eval import DarknetClassifierEvaluator, DarknetDetectorEvaluator
from .darknet_valid import write_detector_valid
from .voc_map import MapResult, average_precision, voc_map

__all__ = ["Evaluator", "CaffeEvaluator", "DarknetClassifierEvaluator",
           "DarknetDetectorEvaluator", "write_detector_valid", "voc_map", "average_precision",
           "MapResult"]

