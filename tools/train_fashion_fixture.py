"""Train the Fashion-MNIST fixture CNN with PyTorch and export it as Caffe and Darknet.

    python -m tools.train_fashion_fixture            # train, export, verify, write README/metrics
    python -m tools.train_fashion_fixture --checkpoint /tmp/fashion.pt   # reuse trained weights

This is the only module of the repository allowed to import torch (a developer tool,
not part of the product). Writes into fixtures/fashion/:
fashion_train_val.prototxt, fashion_deploy.prototxt, fashion.caffemodel, fashion.cfg,
fashion.weights, fashion.data, fashion.names, metrics.json, README.md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import caffe_surgeon as cs  # noqa: E402
from caffe_surgeon.engine import Executor  # noqa: E402
from caffe_surgeon.errors import ModelError  # noqa: E402
from tools.fashion_fixture_readme import write_readme  # noqa: E402
from tools.fashion_mnist import CLASS_NAMES, read_idx, write_image_folder  # noqa: E402

OUT = ROOT / "fixtures" / "fashion"
SEED = 20240531
EPOCHS = 3
BATCH = 64
LR = 3e-3
BN_EPS = 1e-5          # torch default, also Caffe's BatchNorm default
SCALE = 1.0 / 255.0    # 0.00392156862745098, no mean subtraction

# One description drives the torch module, the prototxt and the cfg.
# (name, kind, bottom(s), out channels, kernel); kinds: cbr = conv+BN+ReLU, cb = conv+BN,
# pool = 2x2/2 max, add = sum + ReLU, cat = channel concat, fc = fully connected.
ARCH = [
    ("conv1", "cbr", "data", 16, 3),
    ("pool1", "pool", "conv1", None, 2),
    ("conv2a", "cbr", "pool1", 32, 3),
    ("conv2b", "cbr", "conv2a", 32, 3),
    ("conv2c", "cb", "conv2b", 32, 3),
    ("res2", "add", ("conv2a", "conv2c"), None, None),
    ("pool2", "pool", "res2", None, 2),
    ("b3a", "cbr", "pool2", 24, 1),
    ("b3b", "cbr", "pool2", 24, 3),
    ("cat3", "cat", ("b3a", "b3b"), None, None),
    ("conv4", "cbr", "cat3", 64, 3),
    ("fc", "fc", "conv4", 10, None),
]


# ---------------------------------------------------------------- torch
def build_torch():
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            ch = {"data": 1}
            self.mods = nn.ModuleDict()
            for name, kind, bottom, n, k in ARCH:
                if kind in ("cbr", "cb"):
                    self.mods[name] = nn.Sequential(
                        nn.Conv2d(ch[bottom], n, k, padding=k // 2, bias=False),
                        nn.BatchNorm2d(n, eps=BN_EPS))
                    ch[name] = n
                elif kind == "pool":
                    ch[name] = ch[bottom]
                elif kind == "add":
                    assert ch[bottom[0]] == ch[bottom[1]]
                    ch[name] = ch[bottom[0]]
                elif kind == "cat":
                    ch[name] = sum(ch[b] for b in bottom)
                elif kind == "fc":
                    self.mods[name] = nn.Linear(ch[bottom] * 7 * 7, n)

        def forward(self, x):
            v = {"data": x}
            for name, kind, bottom, n, k in ARCH:
                if kind == "cbr":
                    v[name] = torch.relu(self.mods[name](v[bottom]))
                elif kind == "cb":
                    v[name] = self.mods[name](v[bottom])
                elif kind == "pool":
                    v[name] = nn.functional.max_pool2d(v[bottom], k, k)
                elif kind == "add":
                    v[name] = torch.relu(v[bottom[0]] + v[bottom[1]])
                elif kind == "cat":
                    v[name] = torch.cat([v[b] for b in bottom], 1)
                elif kind == "fc":
                    v[name] = self.mods[name](v[bottom].flatten(1))
            return v["fc"]

    return Net()


def train(epochs: int, log=print):
    import torch
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    images, labels = read_idx("train")
    x_all = torch.from_numpy(images.astype(np.float32) * np.float32(SCALE)).unsqueeze(1)
    y_all = torch.from_numpy(labels)
    net = build_torch()
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=1e-4)
    steps = epochs * (len(x_all) // BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps, pct_start=0.2)
    gen = torch.Generator().manual_seed(SEED)
    t0 = time.time()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(x_all), generator=gen)
        flips = torch.rand(len(x_all), generator=gen) < 0.5
        total = 0.0
        for i in range(len(x_all) // BATCH):
            idx = order[i * BATCH:(i + 1) * BATCH]
            xb = x_all[idx]
            # Mirror half the images: clothes are left-right symmetric, cheap extra data.
            xb = torch.where(flips[idx].view(-1, 1, 1, 1), xb.flip(3), xb)
            loss = torch.nn.functional.cross_entropy(net(xb), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss)
            if i % 200 == 0:
                log(f"epoch {epoch} step {i} loss {total / (i + 1):.4f} ({time.time() - t0:.0f} s)")
    net.eval()
    return net, time.time() - t0


def torch_logits(net, x: np.ndarray) -> np.ndarray:
    import torch
    with torch.no_grad():
        return np.concatenate([net(torch.from_numpy(x[i:i + 1000])).numpy()
                               for i in range(0, len(x), 1000)])


def torch_arrays(net) -> dict:
    """name -> numpy arrays of every parametrised block."""
    out = {}
    for name, kind, _, _, _ in ARCH:
        if kind in ("cbr", "cb"):
            conv, bn = net.mods[name][0], net.mods[name][1]
            out[name] = {k: v.detach().numpy().astype(np.float32).copy() for k, v in (
                ("weight", conv.weight), ("gamma", bn.weight), ("beta", bn.bias),
                ("mean", bn.running_mean), ("var", bn.running_var))}
        elif kind == "fc":
            fc = net.mods[name]
            out[name] = {"weight": fc.weight.detach().numpy().copy(),
                         "bias": fc.bias.detach().numpy().copy()}
    return out


# ---------------------------------------------------------------- Caffe
def _caffe_layers() -> list[str]:
    """Deploy body (everything between the input and the classifier head)."""
    L = []
    for name, kind, bottom, n, k in ARCH:
        if kind in ("cbr", "cb"):
            L.append(f'''layer {{
  name: "{name}"  type: "Convolution"  bottom: "{bottom}"  top: "{name}"
  param {{ lr_mult: 1 decay_mult: 1 }}
  convolution_param {{ num_output: {n} kernel_size: {k} pad: {k // 2} stride: 1 bias_term: false
    weight_filler {{ type: "msra" }} }}
}}''')
            L.append(f'''layer {{
  name: "{name}/bn"  type: "BatchNorm"  bottom: "{name}"  top: "{name}"
  param {{ lr_mult: 0 decay_mult: 0 }}  param {{ lr_mult: 0 decay_mult: 0 }}  param {{ lr_mult: 0 decay_mult: 0 }}
  batch_norm_param {{ use_global_stats: true eps: 1e-05 }}
}}''')
            L.append(f'''layer {{
  name: "{name}/scale"  type: "Scale"  bottom: "{name}"  top: "{name}"
  scale_param {{ bias_term: true }}
}}''')
            if kind == "cbr":
                L.append(f'layer {{ name: "{name}/relu"  type: "ReLU"  bottom: "{name}"  top: "{name}" }}')
        elif kind == "pool":
            L.append(f'''layer {{
  name: "{name}"  type: "Pooling"  bottom: "{bottom}"  top: "{name}"
  pooling_param {{ pool: MAX kernel_size: {k} stride: {k} }}
}}''')
        elif kind == "add":
            L.append(f'''layer {{
  name: "{name}"  type: "Eltwise"  bottom: "{bottom[0]}"  bottom: "{bottom[1]}"  top: "{name}"
  eltwise_param {{ operation: SUM }}
}}''')
            L.append(f'layer {{ name: "{name}/relu"  type: "ReLU"  bottom: "{name}"  top: "{name}" }}')
        elif kind == "cat":
            L.append(f'''layer {{
  name: "{name}"  type: "Concat"  bottom: "{bottom[0]}"  bottom: "{bottom[1]}"  top: "{name}"
  concat_param {{ axis: 1 }}
}}''')
        elif kind == "fc":
            L.append(f'''layer {{
  name: "{name}"  type: "InnerProduct"  bottom: "{bottom}"  top: "{name}"
  param {{ lr_mult: 1 decay_mult: 1 }}  param {{ lr_mult: 2 decay_mult: 0 }}
  inner_product_param {{ num_output: {n} weight_filler {{ type: "xavier" }} bias_filler {{ type: "constant" value: 0 }} }}
}}''')
    return L


HEADER = "# Generated by tools/train_fashion_fixture.py (Fashion-MNIST fixture); do not edit by hand.\n"


def deploy_prototxt() -> str:
    body = "\n".join(_caffe_layers())
    return (HEADER + 'name: "FashionNet"\n'
            'layer {\n  name: "data"  type: "Input"  top: "data"\n'
            '  input_param { shape { dim: 1 dim: 1 dim: 28 dim: 28 } }\n}\n'
            + body + '\nlayer { name: "prob"  type: "Softmax"  bottom: "fc"  top: "prob" }\n')


def train_val_prototxt() -> str:
    def data(phase, source, root, batch, extra):
        return f'''layer {{
  name: "data"  type: "ImageData"  top: "data"  top: "label"
  include {{ phase: {phase} }}
  transform_param {{ scale: 0.00392156862745098{extra[0]} }}
  image_data_param {{ source: "{source}" root_folder: "{root}" batch_size: {batch}
    is_color: false new_height: 28 new_width: 28{extra[1]} }}
}}'''
    head = [data("TRAIN", "train_list.txt", "train/", BATCH, (" mirror: true", " shuffle: true")),
            data("TEST", "t10k_list.txt", "t10k/", 50, ("", ""))]
    tail = ['''layer {
  name: "top-1"  type: "Accuracy"  bottom: "fc"  bottom: "label"  top: "top-1"
  include { phase: TEST }
}''', '''layer {
  name: "top-5"  type: "Accuracy"  bottom: "fc"  bottom: "label"  top: "top-5"
  include { phase: TEST }
  accuracy_param { top_k: 5 }
}''', 'layer { name: "loss"  type: "SoftmaxWithLoss"  bottom: "fc"  bottom: "label"  top: "loss" }']
    return HEADER + 'name: "FashionNet"\n' + "\n".join(head + _caffe_layers() + tail) + "\n"


def caffe_weights(arrays) -> dict:
    """layer name -> Caffe blobs (BVLC BatchNorm: mean, variance, scale_factor=1)."""
    w = {}
    for name, kind, _, _, _ in ARCH:
        a = arrays.get(name)
        if kind in ("cbr", "cb"):
            w[name] = {"weight": a["weight"]}
            w[f"{name}/bn"] = {"mean": a["mean"], "variance": a["var"],
                               "scale_factor": np.ones(1, np.float32)}
            w[f"{name}/scale"] = {"scale": a["gamma"], "bias": a["beta"]}
        elif kind == "fc":
            w[name] = {"weight": a["weight"], "bias": a["bias"]}
    return w


def attach(graph, weights: dict):
    names = {l.name for l in graph.layers}
    missing = set(weights) - names
    if missing:
        raise ModelError(f"export: layers {sorted(missing)} not in the generated definition")
    for layer in graph.layers:
        if layer.name in weights:
            layer.weights = {k: np.ascontiguousarray(v, np.float32) for k, v in weights[layer.name].items()}


# ---------------------------------------------------------------- Darknet
def darknet_cfg() -> tuple[str, dict]:
    """cfg text and ARCH name -> darknet layer index."""
    lines = [HEADER.rstrip(), "[net]", "batch=1", "subdivisions=1", "height=28", "width=28",
             "channels=1", "max_crop=28", "min_crop=28", ""]
    index: dict[str, int] = {}   # ARCH name -> layer index
    tags: list[str] = []         # layer index -> ARCH name (or helper tag)
    last = None

    def emit(tag, section, **opts):
        tags.append(tag)
        lines.append(f"[{section}]")
        lines.extend(f"{k}={v}" for k, v in opts.items())
        lines.append("")
        return len(tags) - 1

    for name, kind, bottom, n, k in ARCH:
        if kind in ("cbr", "cb", "pool", "fc") and bottom != "data" and index[bottom] != last:
            last = emit(f"{name}/route", "route", layers=index[bottom])
        if kind in ("cbr", "cb"):
            last = emit(name, "convolutional", batch_normalize=1, filters=n, size=k, stride=1,
                        pad=1, activation="relu" if kind == "cbr" else "linear")
        elif kind == "pool":
            last = emit(name, "maxpool", size=k, stride=k)
        elif kind == "add":
            a, b = (index[x] for x in bottom)
            if last != b:  # [shortcut] adds `from` to the previous layer
                a, b = b, a
            if last != b:
                raise ModelError(f"export: shortcut {name} needs one operand right before it")
            last = emit(name, "shortcut", **{"from": a}, activation="relu")
        elif kind == "cat":
            last = emit(name, "route", layers=",".join(str(index[x]) for x in bottom))
        elif kind == "fc":
            last = emit(name, "connected", output=n, activation="linear")
        index[name] = last
    emit("softmax", "softmax", groups=1)
    return "\n".join(lines), {t: i for i, t in enumerate(tags)}


def pjreddie_bn(mean, var, eps=BN_EPS):
    """Rolling variance v' with sqrt(v') + 1e-6 == sqrt(var + eps): pjreddie's CPU BN formula."""
    s = np.sqrt(var.astype(np.float64) + eps) - 1e-6
    return mean.astype(np.float32), (s * s).astype(np.float32)


def darknet_weights(arrays, index) -> dict:
    w = {}
    for name, kind, _, _, _ in ARCH:
        a = arrays.get(name)
        if kind in ("cbr", "cb"):
            mean, var = pjreddie_bn(a["mean"], a["var"])
            w[f"convolutional_{index[name]}"] = {"biases": a["beta"], "scales": a["gamma"],
                                                  "rolling_mean": mean, "rolling_variance": var,
                                                  "weights": a["weight"]}
        elif kind == "fc":
            # darknet flattens conv output in C,H,W order like Caffe; weights are [out][in]
            w[f"connected_{index[name]}"] = {"biases": a["bias"], "weights": a["weight"]}
    return w


# ---------------------------------------------------------------- verification
def run_engine(graph, x, outputs, batch=500, **kw):
    ex = Executor(graph, **kw)
    parts = [ex.run({"data": x[i:i + batch]}, outputs) for i in range(0, len(x), batch)]
    return {k: np.concatenate([p[k] for p in parts]).reshape(len(x), -1) for k in outputs}


def run_opencv(proto, model, x, batch=500):
    import cv2
    net = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    fc, prob = [], []
    for i in range(0, len(x), batch):
        net.setInput(x[i:i + batch])
        a, b = net.forward(["fc", "prob"])
        fc.append(a.reshape(len(a), -1))
        prob.append(b.reshape(len(b), -1))
    return np.concatenate(fc), np.concatenate(prob)


def darknet_binary_spot_check(images, labels, count=10, log=print):
    """Top-1 of the Debian darknet binary on `count` PNGs, vs our engine on the same files."""
    exe = "/usr/bin/darknet"
    if not Path(exe).exists():
        return None
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for f in ("fashion.cfg", "fashion.weights", "fashion.names", "fashion.data"):
            (tmp / f).write_bytes((OUT / f).read_bytes())
        paths = write_image_folder(tmp, "t10k", count=count, images=images, labels=labels)
        for path, label in paths:
            out = subprocess.run([exe, "classifier", "predict", "fashion.data", "fashion.cfg",
                                  "fashion.weights", str(path)], cwd=tmp, capture_output=True,
                                 text=True, timeout=120)
            lines = [l for l in out.stdout.splitlines() if "%: " in l]
            if out.returncode or not lines:
                raise ModelError(f"darknet failed on {path.name}: {out.stderr[-300:]}")
            pct, name = lines[0].split("%: ")
            results.append({"image": path.name, "label": int(label), "darknet_top1": CLASS_NAMES.index(name.strip()),
                            "darknet_prob": round(float(pct) / 100, 6)})
    return results


def darknet_binary_valid(images, labels):
    """Top-1 of `darknet classifier valid` (the Debian binary) over all given images."""
    exe = "/usr/bin/darknet"
    if not Path(exe).exists():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for f in ("fashion.cfg", "fashion.weights", "fashion.names", "fashion.data"):
            (tmp / f).write_bytes((OUT / f).read_bytes())
        write_image_folder(tmp, "t10k", images=images, labels=labels)
        out = subprocess.run([exe, "classifier", "valid", "fashion.data", "fashion.cfg", "fashion.weights"],
                             cwd=tmp, capture_output=True, text=True, timeout=1200)
    last = [l for l in out.stdout.splitlines() if ": top 1: " in l]
    if out.returncode or not last or not last[-1].startswith(f"{len(images) - 1}:"):
        raise ModelError(f"darknet classifier valid failed: {out.stderr[-300:]}")
    return float(last[-1].split("top 1: ")[1].split(",")[0])


def stat_text(deploy, model) -> str:
    out = subprocess.run([sys.executable, "-m", "caffe_surgeon.cli.main", "stat", str(deploy), str(model)],
                         cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        raise ModelError(f"caffe-surgeon stat failed: {out.stderr.strip()}")
    return out.stdout


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--checkpoint", help="torch state_dict to reuse (written after training if absent)")
    ap.add_argument("--spot", type=int, default=12, help="images for the darknet binary spot check")
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(1)

    train_seconds = None
    if args.checkpoint and Path(args.checkpoint).exists():
        torch.manual_seed(SEED)
        net = build_torch()
        saved = torch.load(args.checkpoint)
        net.load_state_dict(saved["state"])
        train_seconds = saved.get("train_seconds")
        net.eval()
    else:
        net, train_seconds = train(args.epochs)
        if args.checkpoint:
            torch.save({"state": net.state_dict(), "train_seconds": train_seconds}, args.checkpoint)

    images, labels = read_idx("t10k")
    x = (images.astype(np.float32) * np.float32(SCALE))[:, None]
    logits = torch_logits(net, x)
    probs_t = np.exp(logits - logits.max(1, keepdims=True))
    probs_t /= probs_t.sum(1, keepdims=True)
    arrays = torch_arrays(net)

    OUT.mkdir(parents=True, exist_ok=True)
    deploy, train_val, model = OUT / "fashion_deploy.prototxt", OUT / "fashion_train_val.prototxt", OUT / "fashion.caffemodel"
    deploy.write_text(deploy_prototxt())
    train_val.write_text(train_val_prototxt())
    g = cs.load(deploy)
    attach(g, caffe_weights(arrays))
    with tempfile.TemporaryDirectory() as tmp:
        cs.save(g, Path(tmp) / "d.prototxt", model)

    cfg_text, index = darknet_cfg()
    (OUT / "fashion.cfg").write_text(cfg_text)
    (OUT / "fashion.names").write_text("\n".join(CLASS_NAMES) + "\n")
    (OUT / "fashion.data").write_text("classes=10\ntrain=train_darknet.txt\nvalid=t10k_valid.txt\n"
                                      "labels=fashion.names\nnames=fashion.names\ntop=2\n")
    gd = cs.load(OUT / "fashion.cfg")
    attach(gd, darknet_weights(arrays, index))
    with tempfile.TemporaryDirectory() as tmp:
        cs.save(gd, Path(tmp) / "d.cfg", OUT / "fashion.weights")

    # ---- verify on all 10k t10k images
    gc = cs.load(deploy, model)
    ours = run_engine(gc, x, ["fc", "prob"])
    cv_fc, cv_prob = run_opencv(deploy, model, x)
    gd = cs.load(OUT / "fashion.cfg", OUT / "fashion.weights")
    fc_name, sm_name = f"connected_{index['fc']}", f"softmax_{index['softmax']}"
    dk = run_engine(gd, x, [fc_name, sm_name], darknet_bn="pjreddie")

    def rel(a, b):
        return float(np.abs(a - b).max() / np.abs(b).max())

    def acc(p, k=1):
        top = np.argsort(-p, 1)[:, :k]
        return float((top == labels[:, None]).any(1).mean())

    checks = {
        "caffe_logits_vs_torch": rel(ours["fc"], logits), "caffe_probs_vs_torch": rel(ours["prob"], probs_t),
        "opencv_logits_vs_torch": rel(cv_fc, logits), "opencv_probs_vs_torch": rel(cv_prob, probs_t),
        "darknet_logits_vs_caffe": rel(dk[fc_name], ours["fc"]),
        "darknet_probs_vs_caffe": rel(dk[sm_name], ours["prob"]),
    }
    for k, v in checks.items():
        print(f"max rel error {k}: {v:.3g}")
        if v > 1e-4:
            raise ModelError(f"export check failed: {k} = {v:.3g} > 1e-4")
    agree = float((dk[sm_name].argmax(1) == ours["prob"].argmax(1)).mean())
    spot = darknet_binary_spot_check(images, labels, args.spot)
    if spot:
        for s in spot:
            i = int(s["image"].split("_")[0])
            s["ours_top1"] = int(ours["prob"][i].argmax())
            s["ours_prob"] = round(float(ours["prob"][i].max()), 6)
        bad = [s for s in spot if s["darknet_top1"] != s["ours_top1"] or abs(s["darknet_prob"] - s["ours_prob"]) > 1e-3]
        if bad:
            raise ModelError(f"darknet binary disagrees with our engine: {bad}")

    dk_valid = darknet_binary_valid(images, labels)
    metrics = {
        "seed": SEED, "epochs": args.epochs, "batch": BATCH, "train_seconds": round(train_seconds or 0, 1),
        "torch_version": torch.__version__,
        "t10k_top1": {"torch": acc(probs_t), "caffe_ours": acc(ours["prob"]), "opencv": acc(cv_prob),
                      "darknet_ours": acc(dk[sm_name]), "darknet_binary": dk_valid},
        "t10k_top5": {"torch": acc(probs_t, 5), "caffe_ours": acc(ours["prob"], 5)},
        "t10k_first1000_top1": float((ours["prob"][:1000].argmax(1) == labels[:1000]).mean()),
        "caffe_darknet_top1_agreement": agree,
        "max_rel_error": checks,
        "darknet_binary_spot_check": spot,
    }
    (OUT / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    write_readme(OUT, ARCH, metrics, stat_text(deploy, model), index)
    print(json.dumps({k: metrics[k] for k in ("t10k_top1", "t10k_top5", "train_seconds")}, indent=1))


if __name__ == "__main__":
    try:
        main()
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
