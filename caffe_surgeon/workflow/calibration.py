"""Calibration images for least-squares reconstruction after ``prune`` (opt-in ``-reconstruct N``).

They come from the training data, never from the evaluation set, so the
accuracy ``prune`` reports stays a held-out figure:

- Caffe: the first N records of the TRAIN-phase data layer of the config's
  ``model`` (ImageData list, or a Data / AnnotatedData LMDB), whole and
  transformed as at TEST (no augmentation or sampled crops, centre crop, no
  mirror), fed to the TEST net's data blob;
- Darknet: the first N images of the ``.data`` file's ``train`` list, resized or
  letterboxed exactly as the evaluation's ``valid`` images are.

First records rather than a random draw, so that a run is reproducible.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..detection import darknet_boxes
from ..errors import ModelError
from ..graph import Graph


@dataclass
class Calibration:
    feed: dict          # input blob -> (N, C, H, W) float32 (plus a zero label blob for Caffe)
    count: int
    source: str         # where the images came from, for the report

    def describe(self) -> str:
        return f"{self.count} training image{'s' if self.count != 1 else ''} from {self.source}"


def calibration_images(framework: str, model_files, spec: dict, count: int, graph: Graph,
                       evaluator) -> Calibration:
    """The first ``count`` training images for ``graph`` (the net ``evaluator`` runs)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ModelError(f"-reconstruct takes a number of calibration images >= 1, got {count!r}")
    if framework == "caffe":
        return _caffe(model_files[0], spec, count, evaluator)
    return _darknet(spec, count, graph, evaluator)


def _caffe(prototxt, spec: dict, count: int, evaluator) -> Calibration:
    from .. import api
    from ..evaluation.caffe_eval import read_records
    train = api.load(prototxt, phase="TRAIN")
    try:
        images, source = read_records(train, count, spec.get("base_dir"))
    except ModelError as e:
        raise ModelError(f"-reconstruct reads its calibration images from the TRAIN-phase data "
                         f"layer: {e.message}", file=e.file or str(prototxt), layer=e.layer) from None
    top = evaluator.tops[0]
    want = tuple(evaluator.input_shapes[top][1:])
    if tuple(images.shape[1:]) != want:
        raise ModelError(f"the TRAIN-phase data layer gives images of {tuple(images.shape[1:])} "
                         f"(C, H, W) but the TEST net's '{top}' takes {want}; calibration images "
                         "must fit the evaluated net", file=str(prototxt))
    feed = {top: images}
    for label in evaluator.tops[1:]:  # the TEST net's label blob: read by nothing refitted
        feed[label] = np.zeros(len(images), np.float32)
    return Calibration(feed, len(images), source)


def _darknet(spec: dict, count: int, graph: Graph, evaluator) -> Calibration:
    from ..evaluation.darknet_data import classifier_input, detector_input, read_image_list
    data = evaluator.data
    if data.text("train") is None:
        raise ModelError("-reconstruct reads its calibration images from the .data file's "
                         "train list, and this one has no 'train=' line", file=data.path)
    items = read_image_list(data, "train", count)
    detector = bool(darknet_boxes.head_layers(graph))
    args = (evaluator.net_w, evaluator.net_h, evaluator.channels)
    images = [detector_input(it, *args)[0] if detector else classifier_input(it, *args)
              for it in items]
    return Calibration({"data": np.stack(images)}, len(images), str(items[0].list_file))
