"""How long a command takes to answer before any work: `cnnlab train RECIPE --print-recipe`, a recipe
error, and `cnnlab eval --help`, each against `python -c "import torch"` (the floor every command that
touches a tensor pays). Pairs (import torch, then the command), the median of the pairs' ratios.

    python benchmarks/startup.py [--pairs 7]
Target: each at most 1.5x `import torch`.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cnnlab.bench.timing import paired

ROOT = Path(__file__).resolve().parents[1]


def seconds(*args: str, code: int = 0) -> float:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT)
    took = time.perf_counter() - t0
    if res.returncode != code:
        raise SystemExit(f"{' '.join(args)} exited {res.returncode}, expected {code}:\n{res.stderr}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=7)
    args = ap.parse_args()
    bad = Path(tempfile.mkdtemp(prefix="cnnlab-startup-")) / "typo.yaml"
    bad.write_text("optim: {name: adamww}\nmodel: {widht: 3}\ntrainer: {strategy: fsdp}\n")
    torch_import = lambda: seconds("-c", "import torch")  # noqa: E731
    commands = {
        "train smoke.yaml --print-recipe": lambda: seconds("-m", "cnnlab", "train", "recipes/smoke.yaml", "--print-recipe"),
        "train typo.yaml (3 recipe errors)": lambda: seconds("-m", "cnnlab", "train", str(bad), code=2),
        "eval --help": lambda: seconds("-m", "cnnlab", "eval", "--help"),
    }
    print(f"{args.pairs} pairs each (import torch, then the command); ratio = median of the pairs' ratios")
    for name, fn in commands.items():
        p = paired(torch_import, fn, pairs=args.pairs, warmup=1)
        verdict = "met" if p["iqr"][1] <= 1.5 else "missed" if p["iqr"][0] > 1.5 else "not resolved"
        print(f"  {name:34s}: {statistics.median(p['b']):5.2f} s against {statistics.median(p['a']):5.2f} s, "
              f"{p['ratio']:.2f}x (IQR {p['iqr'][0]:.2f}-{p['iqr'][1]:.2f}); target <= 1.5x: {verdict}")


if __name__ == "__main__":
    main()
