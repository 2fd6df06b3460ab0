"""The core of ``benchmarks/finetune.py --quick`` on the shipped Fashion images: the vendor's
``ana`` -> ``prune`` -> ``finetune`` commands raise top-1, and the dense model ``transform``
makes of the last snapshot predicts in OpenCV exactly what our engine predicts."""
from __future__ import annotations

import sys
from pathlib import Path

from assets import need_module

need_module("torch")
need_module("cv2")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.commands import run_logged  # noqa: E402
from benchmarks.finetune import (FASHION, opencv_agreement, prune_and_finetune,  # noqa: E402
                                 scratch, t10k_arrays)


def test_prune_then_finetune_raises_top1_and_opencv_agrees_on_the_transformed_model(tmp_path):
    work = scratch(tmp_path, FASHION, FASHION)  # the 64 shipped train and 500 t10k images
    data = t10k_arrays(500)
    run_logged(work, 1, "vai_p_caffe", "ana", "-config", "config.prototxt", "-no_progress")
    r = prune_and_finetune(work, 0.5, "fashion.caffemodel", 30, 1, data)
    assert r.finetuned > r.pruned + 0.05, (r.pruned, r.finetuned)
    ours, cv, agree = opencv_agreement(work, r.snapshot, 1, *data)
    assert agree == 1.0 and cv == ours == r.finetuned, (ours, cv, agree, r.finetuned)
