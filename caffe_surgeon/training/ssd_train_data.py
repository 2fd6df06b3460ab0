"""TRAIN batches of SSD's ``AnnotatedData`` layer: LMDB ``AnnotatedDatum`` records through
the fork's augmentation (``ssd_augment.py``), the transform's mean and scale, and the label
blob the fork builds (``annotated_data_layer.cpp`` ``load_batch``).

The label top is ``(1, 1, G, 8)``: one row ``[item, group_label, instance_id, xmin, ymin,
xmax, ymax, difficult]`` per box left after augmentation, items in batch order; a batch
with no box left at all gets one row of -1 (MultiBoxLoss then matches nothing). Records are
read in key order (the fork's cursor; AnnotatedData has no ``shuffle``), wrapping at the
end, as ``train_order.py`` numbers items; each item's draws come from its own generator
seeded by ``(seed, item)``, so a batch is a pure function of its iteration number.
"""
from __future__ import annotations

import threading

import numpy as np

from ..errors import ModelError
from ..evaluation.caffe_data import datum_image
from ..evaluation.caffe_transform import Transform, resolver
from .ssd_augment import SsdAugmentation
from .train_data import BatchMaker

F32 = np.float32
_STREAM = 0x55D  # this module's SeedSequence stream, apart from train_order's
_LOCK = threading.Lock()
_LEFT_TO_AUGMENT = ("resize_param", "distort_param", "expand_param", "emit_constraint",
                    "noise_param")


def item_rng(seed: int, item: int) -> np.random.Generator:
    """The generator of one item's augmentation draws."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, _STREAM, item])))


class AnnotatedBatchMaker(BatchMaker):
    """Builds one rank's AnnotatedData batch from its iteration number (plain data only, so
    it travels to worker processes like ``train_data.BatchMaker``, whose item order and
    pickling it shares)."""

    def __init__(self, layer, params: dict, source, order, keys, tops, batch_size: int,
                 world: int, rank: int, net_file, base_dir):
        tp = dict(params.get("transform_param", {}))
        # mean and scale only: resize, distortion, expansion and emit are the augmentation's
        transform = Transform({k: v for k, v in tp.items() if k not in _LEFT_TO_AUGMENT
                               and k != "mirror"}, layer.name, net_file, resolver(base_dir))
        super().__init__(source, transform, order, keys, tops, batch_size, world, rank,
                         net_file, layer.name)
        self.augment = SsdAugmentation(tp, params.get("annotated_data_param", {}), net_file,
                                       layer.name)

    def plan(self, iteration: int, shapes=None):
        """``(items, [(record, None, mirrored), ...])`` (builds the batch to learn the flips)."""
        items = self.items(iteration)
        flips = self._build(iteration)[2]
        return items, [(int(r), None, f) for r, f in zip(self.order.records(items), flips)]

    def __call__(self, iteration: int) -> dict[str, np.ndarray]:
        data, labels, _ = self._build(iteration)
        batch = {self.tops[0]: data}
        if len(self.tops) > 1:
            batch[self.tops[1]] = labels
        return batch

    def _build(self, iteration: int):
        """``(data, label blob, flips)``; any failure is one line naming the layer."""
        try:
            return self._build_batch(iteration)
        except ModelError as e:
            raise e.located(file=self.net_file, layer=self.layer) from None
        except Exception as e:  # a reader bug or an OS error: still one line, still located
            raise ModelError(f"building batch {iteration}: {type(e).__name__}: {e}",
                             file=self.net_file, layer=self.layer) from None

    def _build_batch(self, iteration: int):
        items = self.items(iteration)
        records = [int(r) for r in self.order.records(items)]
        loaded = self._load(records)
        images, rows, flips = [], [], []
        for item, r, (image, boxes, encoded) in zip(items, records, loaded):
            what = self._describe(r)
            image, boxes, flip = self.augment(image, boxes, encoded, self.source.mode,
                                              item_rng(self.order.seed, int(item)), what)
            self.transform.check(tuple(image.shape), what, encoded)
            images.append(self.transform(image, False, None, flip))
            rows.append(boxes)
            flips.append(flip)
            if images[-1].shape != images[0].shape:
                raise ModelError(f"{what} gives {images[-1].shape} (C, H, W) but "
                                 f"{self._describe(records[0])} in the same batch gives "
                                 f"{images[0].shape}; resize_param makes SSD images one size",
                                 file=self.net_file, layer=self.layer)
        return np.stack(images), label_blob(rows), flips

    def _load(self, records):
        """``(image, boxes, encoded)`` per record, through one LMDB handle per process."""
        with _LOCK:  # one handle per process, closed when no batch reads (as BatchMaker)
            if self._env is None:
                self._env = self.source.open()
            self._users += 1
        try:
            return self._read(records, self._env)
        finally:
            with _LOCK:
                self._users -= 1
                if self._users == 0:
                    self._env.close()
                    self._env = None

    def _read(self, records, env):
        from ..caffe import caffe_pb2
        out = []
        with env.begin(buffers=False) as txn:
            for r in records:
                what = self._describe(r)
                value = txn.get(self.keys[r])
                if value is None:
                    raise ModelError(f"{what} is gone (was the database rewritten?)")
                record = caffe_pb2.AnnotatedDatum()
                try:
                    record.ParseFromString(value)
                except Exception as e:  # protobuf raises DecodeError, sometimes others
                    raise ModelError(f"{what}: not an AnnotatedDatum: {e}") from None
                if record.type != caffe_pb2.AnnotatedDatum.BBOX or not record.HasField("datum"):
                    raise ModelError(f"{what}: not a BBOX AnnotatedDatum with a datum")
                image = datum_image(record.datum, self.source.mode, what)
                boxes = [(g.group_label, a.instance_id, a.bbox.xmin, a.bbox.ymin, a.bbox.xmax,
                          a.bbox.ymax, float(a.bbox.difficult))
                         for g in record.annotation_group for a in g.annotation]
                out.append((image, np.asarray(boxes, F32).reshape(-1, 7),
                            bool(record.datum.encoded)))
        return out

    def _describe(self, record: int) -> str:
        return f"{self.source.path} record {record} (key {self.keys[record].decode('latin-1')!r})"


def label_blob(rows: list[np.ndarray]) -> np.ndarray:
    """The fork's label top for a batch: ``(1, 1, G, 8)``, or one row of -1 when no image
    of the batch has a box left."""
    out = [np.concatenate([np.full((len(r), 1), i, F32), r], axis=1) for i, r in enumerate(rows)
           if len(r)]
    if not out:
        return np.full((1, 1, 1, 8), -1, F32)
    return np.concatenate(out).astype(F32).reshape(1, 1, -1, 8)
