"""`cnnlab pack`: what a pack holds."""
from __future__ import annotations

from typing import Any

from cnnlab.report.console import console, kv_table


def pack_summary(r: dict[str, Any]) -> None:
    rows = [("source", str(r["source"])), ("images", ", ".join(f"{n} {c:,}" for n, c in r["splits"].items())),
            ("shape", "x".join(map(str, r["shape"])) + " uint8"), ("classes", str(len(r["classes"])))]
    rows += [("file", f"{f['file']} ({f['bytes'] / 2**20:.1f} MiB)") for f in r["files"]]
    if "write_s" in r:
        rows += [("read / write", f"{r['read_s']:.1f} s / {r['write_s']:.2f} s ({r['mb_per_s']:,.0f} MiB/s)")]
    else:
        rows += [("verified", f"header, size and SHA-256 of every file in {r['seconds']:.2f} s")]
    sha = r["sha256"] if isinstance(r["sha256"], str) else f"{len(r['sha256'])} shards, each checked"
    rows.append(("sha256", sha))
    if r.get("skipped"):
        rows.append(("left out", f"{len(r['skipped'])} unreadable files (data.bad_images: skip)"))
    if r.get("not_applied"):
        rows.append(("not applied", f"{', '.join('data.' + k for k in r['not_applied'])}: whole splits are packed; "
                                    "a recipe reading the pack selects"))
    console.print(kv_table(f"pack {r['out']}", rows))
