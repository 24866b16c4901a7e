"""What limits a training step, read from measured phase times: the verdict (data-, copy- or
compute-bound, or balanced), the changes cnnlab offers for it as `--set` lines, and the numbers
around it (the instrumentation's overhead as a median of paired ratios, thread scaling, the
fraction of the machine's matmul peak a step achieves). Pure functions of measurements."""
from __future__ import annotations

import statistics
from typing import Any, Sequence

# the phases each share is made of: device augmentation is compute; loader augmentation happens in
# the loader, so it is already inside `data`
SHARES = {"data": ("data",), "copy": ("copy",), "compute": ("augment", "forward", "backward", "optimizer")}
BOUND = 0.5  # a share of at least half the step decides the verdict
REST_LIMIT = 0.10  # "the rest" above this fraction of the step means a phase is missing


def mean_phases(steps: Sequence[dict[str, float]]) -> dict[str, float]:
    """Median seconds per phase over phased steps (a median: one step that waited on the OS is not
    the step), with `step` the median step time."""
    keys = list(steps[0])
    out = {k: statistics.median(s[k] for s in steps) for k in keys}
    out["step"] = statistics.median(sum(s.values()) for s in steps)
    return out


def shares(phases: dict[str, float]) -> dict[str, float]:
    """Fractions of the step (the sum of its phases) that wait for data, copy, compute, and the rest."""
    total = sum(v for k, v in phases.items() if k != "step")
    out = {name: sum(phases.get(p, 0.0) for p in parts) / total for name, parts in SHARES.items()}
    out["rest"] = phases.get("rest", 0.0) / total
    return out


def verdict(share: dict[str, float], recipe: dict[str, Any], device: str) -> dict[str, Any]:
    """The largest of the data, copy and compute shares, named; `balanced` when none reaches half the
    step (the largest still named), with the advice for it and the candidate changes (`--set`
    lines) that `--try-alternatives` measures before any of them is recommended."""
    name = max(SHARES, key=lambda k: share[k])
    kind = f"{name}-bound" if share[name] >= BOUND else "balanced"
    candidates = alternatives(name, recipe, device)
    lead = {
        "data": f"{share['data']:.0%} of each step waits for data",
        "copy": f"{share['copy']:.0%} of each step copies the batch to the device",
        "compute": f"{share['compute']:.0%} of each step computes (forward, backward, optimizer, device augmentation)",
    }[name]
    advice = {
        "data": "try " + " or ".join(f"`{c}`" for c in candidates) if candidates else "the data path is as fast as cnnlab makes it",
        "copy": "pin memory and copy with non_blocking (cnnlab does both for host batches), or keep the images on the "
                "device: `data.placement=device`",
        "compute": "try " + " or ".join(f"`{c}`" for c in candidates) if candidates else "a smaller or cheaper model",
    }[name]
    text = (f"{kind}: {lead}; {advice}" if kind != "balanced" else
            f"balanced: no share reaches half the step; the largest is {name} ({share[name]:.0%}): {advice}")
    return {"verdict": kind, "largest": name, "share": share[name], "text": text, "candidates": candidates}


def alternatives(largest: str, recipe: dict[str, Any], device: str) -> list[str]:
    """The recipe changes worth measuring for what limits it (each one or more `--set` overrides,
    space-separated, that differ from the recipe as written and are valid together)."""
    data, augment, trainer = recipe["data"], recipe["augment"], recipe["trainer"]
    out: list[str] = []
    if largest in ("data", "copy"):
        loader_ops = bool(augment.get("ops")) and augment.get("where") == "loader"
        if loader_ops:
            out.append("augment.where=device")
        if data.get("placement") != "device":  # device placement augments on the device too
            out.append("data.placement=device" + (" augment.where=device" if loader_ops else ""))
        if largest == "data" and data.get("num_workers", 0) == 0 and data.get("placement") != "device":
            out.append("data.num_workers=2")
    else:
        if trainer.get("precision") != "bf16-mixed":
            out.append("trainer.precision=bf16-mixed")
        out.append(f"trainer.channels_last={'false' if trainer.get('channels_last', True) else 'true'}")
        if device == "cpu" and trainer.get("accelerator") in ("auto", "cpu"):
            pass  # a GPU, when present, is measured side by side separately
    return out


def paired_ratio(steps: Sequence[Any], block: int, a: Any, b: Any) -> dict[str, Any]:
    """The median over rounds of (block of `a`) / (the next block of `b`), seconds per image: a
    block of each in turn, so the machine's drift falls on both."""
    blocks: list[tuple[Any, float]] = []
    for i in range(0, len(steps) - block + 1, block):
        chunk = steps[i: i + block]
        if len({s.condition for s in chunk}) == 1:
            blocks.append((chunk[0].condition, sum(s.seconds for s in chunk) / sum(s.images for s in chunk)))
    ratios = [x / y for (ca, x), (cb, y) in zip(blocks, blocks[1:]) if ca == a and cb == b]
    if not ratios:
        return {"ratio": None, "pairs": 0, "ratios": []}
    return {"ratio": statistics.median(ratios), "pairs": len(ratios), "ratios": ratios,
            "spread": [min(ratios), max(ratios)]}


def per_condition(steps: Sequence[Any], block: int, conditions: Sequence[Any]) -> dict[Any, dict[str, Any]]:
    """Images/s per condition (median over its blocks), and its speed against the first condition
    as the median of the rounds' ratios (each round ran every condition one block after another)."""
    per: dict[Any, list[float]] = {c: [] for c in conditions}
    for i in range(0, len(steps) - block + 1, block):
        chunk = steps[i: i + block]
        if len({s.condition for s in chunk}) == 1 and chunk[0].condition in per:
            per[chunk[0].condition].append(sum(s.images for s in chunk) / sum(s.seconds for s in chunk))
    base = per[conditions[0]]
    out = {}
    for c in conditions:
        rates = per[c]
        ratios = [r / b for r, b in zip(rates, base)]
        out[c] = {"images_per_s": statistics.median(rates) if rates else None, "rounds": len(rates),
                  "vs_first": statistics.median(ratios) if ratios else None}
    return out


def scaling(threads: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """The thread table: images/s per thread count, the speed-up over the first count, and the
    speed-up each added core brings (its parallel efficiency)."""
    counts = sorted(threads)
    rows = []
    for n in counts:
        r = threads[n]
        speedup = r["vs_first"]
        rows.append({"threads": n, "images_per_s": r["images_per_s"], "speedup": speedup,
                     "per_added_core": ((speedup - 1) / (n - counts[0])) if speedup is not None and n != counts[0] else None,
                     "efficiency": speedup * counts[0] / n if speedup is not None else None})
    return rows


def flop_fraction(flops_per_step: int, compute_seconds: float, peak_gflops: float | None) -> dict[str, Any]:
    """The FLOP/s a step's compute achieved (its FLOPs over the compute phases' time), and that as a
    fraction of the machine's measured matmul peak."""
    achieved = flops_per_step / compute_seconds / 1e9 if compute_seconds > 0 else None
    fraction = achieved / peak_gflops if achieved and peak_gflops else None
    # above the peak: the peak was measured while the machine was busier (it is cached), not a real
    # >100%: `profile --machine --refresh` measures it again
    return {"flops_per_step": flops_per_step, "achieved_gflops": achieved, "peak_gflops": peak_gflops,
            "fraction_of_peak": fraction, "above_peak": fraction is not None and fraction > 1}


def parse_threads(text: str, cores: int) -> list[int]:
    """'1,2' -> [1, 2]: distinct thread counts from 1 to a few times the machine's cores."""
    from cnnlab.errors import UserError

    try:
        counts = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1 or len(set(counts)) != len(counts) or max(counts) > 4 * cores:
        raise UserError(f"--threads {text!r}: distinct thread counts from 1 to {4 * cores} "
                        f"(this machine has {cores} usable cores), comma-separated, e.g. 1,{max(cores, 2)}")
    return counts


def measured_advice(rows: list[dict[str, Any]], better: float = 1.05) -> dict[str, Any]:
    """What `--try-alternatives` found: the fastest candidate if it beats the recipe as written by
    more than `better` (a median of paired ratios), else that none does here, with each ratio."""
    tried = [r for r in rows if r.get("vs_recipe") is not None and r["set"] != "(as written)"]
    ratios = ", ".join(f"`{r['set']}` {r['vs_recipe']:.2f}x" for r in tried)
    best = max(tried, key=lambda r: r["vs_recipe"], default=None)
    if best is not None and best["vs_recipe"] > better:
        return {"recommended": best["set"], "vs_recipe": best["vs_recipe"],
                "text": f"measured here: `{best['set']}` runs {best['vs_recipe']:.2f}x the recipe's images/s ({ratios})"}
    return {"recommended": None, "vs_recipe": None,
            "text": f"measured here: none is faster than the recipe as written ({ratios})" if tried else
                    "measured here: no candidate ran"}
