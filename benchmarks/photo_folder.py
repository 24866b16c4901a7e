"""Camera-sized photos through `cnnlab finetune`: peak RSS of the whole process, decode throughput on
the first run, and the cached second run's data loading, side by side.

The folder is built from real photos, scikit-learn's two sample images (china.jpg, flower.jpg, one
class each): random crops at 4:3, flips, resized up to the camera size and saved as JPEG quality 90;
every fourth is stored sideways with EXIF orientation 6, as phones store portrait shots. 80% go to
train/, 20% to test/.

    python benchmarks/photo_folder.py [--photos 1000] [--size 4032x3024] [--image-size 224]
Targets (1,000 photos at 4032x3024, 224 px): peak RSS <= 2 GB; >= 50 photos/s decoded on the first
run; the second run's data loading >= 10x faster (from the cache).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RUN = """
import atexit, resource, sys
atexit.register(lambda: print(f"PEAK_RSS_KIB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr))
from cnnlab.cli import main
sys.argv = ["cnnlab"] + sys.argv[1:]
main()
"""


def build(folder: Path, n: int, size: tuple[int, int]) -> None:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]
    rng = np.random.default_rng(0)
    jobs = []
    for i in range(n):
        cls = i % 2
        split = "test" if i % 5 == 4 else "train"
        w0, h0 = photos[cls].size
        s = rng.uniform(0.5, 1.0)
        cw, ch = int(min(w0, h0 * 4 / 3) * s), int(min(w0, h0 * 4 / 3) * s * 3 / 4)
        x, y = int(rng.integers(0, w0 - cw + 1)), int(rng.integers(0, h0 - ch + 1))
        jobs.append((cls, split, i, (x, y, x + cw, y + ch), bool(rng.integers(2)), i % 4 == 3))

    def make(job) -> None:
        cls, split, i, box, flip, sideways = job
        im = photos[cls].crop(box).resize(size, Image.BICUBIC)
        if flip:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        exif = Image.Exif()
        if sideways:  # a portrait shot: stored turned a quarter left, EXIF says rotate 90 to view
            im = im.transpose(Image.Transpose.ROTATE_90)
            exif[0x0112] = 6
        out = folder / split / ["china", "flower"][cls] / f"{i:05d}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        im.save(out, quality=90, exif=exif)

    with ThreadPoolExecutor() as pool:
        list(pool.map(make, jobs))
    (folder / "done").write_text(str(n))


def finetune(folder: Path, work: Path, image_size: int, cache: Path) -> dict:
    out = work / "runs"
    args = ["finetune", str(ROOT / "recipes" / "transfer_different.yaml"), "--set", "data.source=imagefolder",
            "--set", f"data.root={folder}", "--set", f"data.image_size={image_size}", "--set", "data.subset=null",
            "--set", "data.test_subset=null", "--set", "data.classes=null", "--set", "finetune.regime=linear",
            "--set", f"data.cache_dir={cache}", "--set", f"finetune.cache_dir={work / 'features'}", "--set", f"output.dir={out}", "--set", "output.plots=false"]
    before = set(out.glob("*")) if out.exists() else set()
    p = subprocess.run([sys.executable, "-c", RUN, *args], capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise SystemExit(p.stdout[-3000:] + p.stderr[-3000:])
    [run] = set(out.glob("*")) - before
    r = json.loads((run / "results.json").read_text())
    peak = int(next(line.split()[1] for line in p.stderr.splitlines() if line.startswith("PEAK_RSS_KIB")))
    return {"peak_rss_gib": peak / 2**20, "load_s": r["data"]["load_s"], "files": r["data"]["files"]["decoded"],
            "cached": r["data"]["files"]["cached"], "wall_s": r["wall_time_s"], "fit_s": r.get("fit_s"),
            "test_acc": r["test_acc"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=1000)
    ap.add_argument("--size", default="4032x3024", help="W x H of each photo")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--folder", type=Path, default=None, help="default .cache/bench-photos/<photos>-<size>")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    folder = args.folder or ROOT / ".cache" / "bench-photos" / f"{args.photos}-{args.size}"
    if not (folder / "done").is_file():
        print(f"building {args.photos} photos at {args.size} in {folder} ...", flush=True)
        build(folder, args.photos, size)
    mb = sum(f.stat().st_size for f in folder.rglob("*.jpg")) / 2**20
    work = Path(tempfile.mkdtemp(prefix="cnnlab-photos-"))
    cache = work / "image-cache"
    # the second run finds both the decoded images and the backbone's features cached
    first, second = finetune(folder, work, args.image_size, cache), finetune(folder, work, args.image_size, cache)
    print(f"{args.photos} photos at {args.size} ({mb:.0f} MB of JPEG), image_size {args.image_size}, cnnlab finetune --regime linear:")
    for name, r in (("first run (decoded)", first), ("second run (cached)", second)):
        print(f"  {name:20s}: data {r['load_s']:7.2f} s ({r['files'] / r['load_s']:7.1f} photos/s), "
              f"run {r['wall_s']:6.1f} s, peak RSS {r['peak_rss_gib']:.2f} GiB, test acc {r['test_acc']:.2%}, "
              f"from cache: {r['cached']}")
    print(f"  cached data loading is {first['load_s'] / second['load_s']:.1f}x faster "
          "(targets: >= 50 photos/s first, >= 10x cached, peak <= 2 GiB)")


if __name__ == "__main__":
    main()
