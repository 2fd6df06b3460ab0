"""The README's Layout section matches the tree: every path it names exists, and every
package folder and top-level folder is named there."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _layout_paths() -> set[str]:
    """Paths named in the Layout: a bullet opens with a path; bare file names after it
    (``groups.py``) are inside that path."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    paths = set()
    for bullet in re.split(r"\n- ", "\n" + section)[1:]:
        names = re.findall(r"`([\w][\w./-]*)`", bullet)
        if not names or "/" not in names[0]:
            continue
        base = names[0].rstrip("/")
        paths.add(base)
        for name in names[1:]:
            if "/" in name:
                paths.add(name.rstrip("/"))
            elif re.fullmatch(r"[\w-]+\.(py|md|proto|json|sh)", name) and (ROOT / base).is_dir():
                paths.add(f"{base}/{name}")
    return paths


def _tracked_dirs() -> set[str]:
    try:
        files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: walk the tree
        files = [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*") if p.is_file()
                 and ".git" not in p.parts and "__pycache__" not in p.parts]
    return {str(Path(f).parent.as_posix()) for f in files if "/" in f}


def test_every_path_the_layout_names_exists():
    named = _layout_paths()
    assert len(named) > 10
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"README Layout names paths that do not exist: {missing}"


def test_every_package_and_top_level_folder_is_in_the_layout():
    named = _layout_paths()
    dirs = _tracked_dirs()
    packages = {d for d in dirs if d.startswith("caffe_surgeon/") and d.count("/") == 1}
    top = {d.split("/")[0] for d in dirs if not d.startswith(".")}
    unnamed = sorted(d for d in packages | top if d not in named
                     and not any(n.startswith(d + "/") for n in named))
    assert not unnamed, f"folders the README Layout does not mention: {unnamed}"
