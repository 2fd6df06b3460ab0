"""MobileNet v2's 3x3 depthwise layers: the 3x3 kernels (depthwise_3x3.py) against the plane
kernel they replace, and against onnxruntime's depthwise Conv, in one process.

For each layer shape (stride 1 and 2, pad 1, with the BatchNorm + Scale + ReLU6 epilogue the
net fuses) this times ``depthwise_3x3.depthwise_3x3`` (in this machine's vectors: zmm with
AVX-512, else ymm) and ``depthwise_planes.depthwise_planes``
interleaved, medians, and prints the ratio (plane / 3x3: above 1, the new kernel is faster)
and whether both outputs are equal bit for bit (they must be). onnxruntime (when installed)
runs the same depthwise Conv alone, bias-free and without the epilogue, for scale: its NCHW
input is reordered to its blocked layout and back inside the call. Run:

    python benchmarks/depthwise_3x3.py [--threads 1] [--rounds 5]
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import kernel_bench_args, median_time  # noqa: E402

#: (channels, H=W, stride): MobileNet v2 at 224x224
LAYERS = [(32, 112, 1), (96, 112, 2), (144, 56, 1), (144, 56, 2), (192, 28, 1), (384, 28, 1),
          (384, 28, 2), (576, 14, 1), (576, 14, 2), (960, 7, 1)]


def _ort_session(c, h, s, w, threads):
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    o = (h - 1) // s + 1
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], strides=[s, s],
                            pads=[1, 1, 1, 1], group=c)
    graph = helper.make_graph([node], "dw",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, h])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, o, o])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def main() -> int:
    args = kernel_bench_args(__doc__, 5)
    from caffe_surgeon.engine.kernels import depthwise_3x3, depthwise_planes
    from caffe_surgeon.engine.kernels.epilogue import Epilogue
    if not depthwise_3x3.applies((1, 1, 3, 3), (1, 1), (1, 1), (1, 1)):
        print("no AVX2 here: the engine keeps the plane kernel (timed anyway)")
    print(f"3x3 kernels in {'zmm' if depthwise_3x3.MACHINE_LANES == 16 else 'ymm'} vectors")
    print(f"{'layer':22s} {'plane ms':>9} {'3x3 ms':>8} {'ratio':>6}  bit-equal  "
          f"{'ort ms':>7} {'3x3/ort':>7}")
    rng = np.random.default_rng(0)
    ratios, versus = [], []
    for c, h, s in LAYERS:
        x = rng.standard_normal((1, c, h, h), dtype=np.float32)
        w = rng.standard_normal((c, 1, 3, 3), dtype=np.float32)
        ep = Epilogue(c).mul(rng.random(c, dtype=np.float32)).add(rng.random(c, dtype=np.float32)) \
            .mul(rng.random(c, dtype=np.float32)).add(rng.random(c, dtype=np.float32)).clip(0, 6)
        arrays = ep.arrays()
        o = (h - 1) // s + 1
        runs = {"plane": lambda: depthwise_planes.depthwise_planes(x, w, (s, s), (1, 1), (1, 1), (o, o),
                                                                   arrays),
                "3x3": lambda: depthwise_3x3.depthwise_3x3(x, w, (s, s), arrays)}
        sess = _ort_session(c, h, s, w, args.threads)
        if sess is not None:
            runs["ort"] = lambda: sess.run(None, {"x": x})
        times = {k: [] for k in runs}
        for _ in range(args.rounds):
            for k, fn in runs.items():
                fn()
                times[k].append(median_time(fn, 5))
        t = {k: statistics.median(v) for k, v in times.items()}
        same = np.array_equal(runs["plane"]().view(np.uint32), runs["3x3"]().view(np.uint32))
        ratios.append(t["plane"] / t["3x3"])
        ort_cells = ""
        if "ort" in t:
            versus.append(t["3x3"] / t["ort"])
            ort_cells = f"  {t['ort'] * 1e3:7.3f} {t['3x3'] / t['ort']:7.2f}"
        print(f"{c:4d} ch {h:3d}x{h:<3d} stride {s} {t['plane'] * 1e3:9.3f} {t['3x3'] * 1e3:8.3f} "
              f"{t['plane'] / t['3x3']:6.2f}  {'yes' if same else 'NO':9s}{ort_cells}")
    print(f"plane / 3x3 over {len(ratios)} layers: median {statistics.median(ratios):.2f}, "
          f"min {min(ratios):.2f}, max {max(ratios):.2f}")
    if versus:
        print(f"3x3 / onnxruntime (alone, no epilogue): median {statistics.median(versus):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
