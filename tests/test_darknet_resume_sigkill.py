"""Issue 16, acceptance item 4: a ``vai_p_darknet pruner finetune`` killed with SIGKILL after
its first backup resumes (``-resume``) from that backup and ends with the bytes of an
uninterrupted run (CPU, fixed seed). Real processes, so nothing in Python survives the kill:
only the files the run wrote."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from assets import FIXTURES, need_module

need_module("torch")

ROOT = Path(__file__).resolve().parents[1]
TRAIN = FIXTURES / "darknet" / "train"
MAX_BATCHES = 130  # the first backup (and snapshot) is written at iteration 100
SEED = 5


def workspace(root: Path, name: str) -> Path:
    """A tiny labelled set (random pixels, 1-3 boxes of 2 classes), the 64 x 64 yolov3-tiny
    shaped cfg with its weights, a .data whose backup is ``root/name/backup``, and the
    [pruning] file that trains them; returns the [pruning] file."""
    from PIL import Image
    rng = np.random.default_rng(0)
    folder = root / name
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    lines = []
    for i in range(8):
        Image.fromarray((rng.random((48, 56, 3)) * 255).astype(np.uint8)).save(
            folder / "images" / f"im{i}.png")
        rows = [f"{rng.integers(0, 2)} {rng.uniform(.3, .7):.4f} {rng.uniform(.3, .7):.4f} "
                f"{rng.uniform(.1, .4):.4f} {rng.uniform(.1, .4):.4f}\n"
                for _ in range(rng.integers(1, 4))]
        (folder / "labels" / f"im{i}.txt").write_text("".join(rows))
        lines.append(f"{folder / 'images' / f'im{i}.png'}\n")
    (folder / "train.txt").write_text("".join(lines))
    data = folder / "set.data"
    data.write_text(f"classes=2\ntrain={folder / 'train.txt'}\nbackup={folder / 'backup'}\n")
    cfg = folder / "tiny.cfg"
    cfg.write_text((TRAIN / "yolov3_tiny_shaped.cfg").read_text().replace("random=1", "random=0"))
    shutil.copy(TRAIN / "yolov3_tiny_shaped.weights", folder / "tiny.weights")
    pruning = folder / "pruning.cfg"
    pruning.write_text(f"[pruning]\nworkspace={folder / 'ws'}\ndatacfg={data}\nmodelcfg={cfg}\n"
                       f"prunedcfg={cfg}\nprune_out_weights={folder / 'tiny.weights'}\n")
    return pruning


def finetune_command(pruning: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "caffe_surgeon.cli.vai_p_darknet", "pruner", "finetune",
            str(pruning), "-max_batches", str(MAX_BATCHES), "-seed", str(SEED), *extra]


def child_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def test_a_sigkilled_finetune_resumes_from_its_last_backup_and_ends_byte_identical(tmp_path):
    straight = workspace(tmp_path, "straight")
    subprocess.run(finetune_command(straight), cwd=straight.parent, env=child_env(),
                   check=True, capture_output=True, timeout=600)
    expected = (straight.parent / "backup" / "tiny_final.weights").read_bytes()

    killed = workspace(tmp_path, "killed")
    backup = killed.parent / "backup"
    proc = subprocess.Popen(finetune_command(killed), cwd=killed.parent, env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while not (backup / "tiny.snapshot.npz").exists():  # written right after tiny.backup
            assert proc.poll() is None, "the run ended before its first backup"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert (backup / "tiny.backup").is_file()  # written before the snapshot
    assert not (backup / "tiny_final.weights").exists()  # killed mid-run, not after it

    done = subprocess.run(finetune_command(killed, "-resume"), cwd=killed.parent,
                          env=child_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming at iteration 100" in done.stdout
    iterations = [line.split(":")[0] for line in done.stdout.splitlines() if " avg, " in line]
    assert iterations == [str(i) for i in range(101, MAX_BATCHES + 1)]
    assert (backup / "tiny_final.weights").read_bytes() == expected
