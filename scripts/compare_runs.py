"""Compare two `symaudit reproduce` output directories file by file (a refactoring check).

    python scripts/compare_runs.py OUT_A OUT_B

Every file present in either directory is compared by SHA-256. Files that differ are then
compared by content with wall-clock fields removed: result files (``*.pt``: influence,
equivariance, checkpoints) by every tensor, bit for bit, and their JSON metadata; JSON files
by value. Wall-clock fields (timings, seconds, samples/s, finish times) differ between any two
runs of the same code, so they are left out; nothing else is. Exit code 1 if anything else
differs. Figures and the HTML report are compared by SHA-256 only (PNG files embed no time,
but a report states run times).
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import sys
from pathlib import Path

import torch

#: keys holding wall-clock times or rates (and values derived from them)
WALL = {
    "timings",
    "seconds",
    "cpu_seconds",
    "sweep_seconds",
    "samples_per_second",
    "finished",
    "output_sha256",  # manifests: digests of outputs that hold timings
    # audit.json: the checkpoint's bytes include its training history's wall times, so its
    # digest (and the settings digest over it) differ between any two trainings; the model
    # state itself is compared tensor by tensor in runs/*/checkpoint.pt
    "checkpoint_sha256",
    "settings_digest",
    "audit_seconds",  # report.json: solve and influence wall times per audit
}
#: (where the key sits, key): values that are not wall times but differ between any two runs
#: of the same code: the unseeded Python and NumPy generator states a checkpoint captures
#: (training draws from torch's seeded generators only), and the checkpoint's payload digest
#: over them and the history's wall times
UNSEEDED = {(".rng", "python"), (".rng", "numpy"), ("checkpoint.pt", "digest")}


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in WALL}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    if isinstance(obj, str) and obj[:1] in "{[":
        try:
            return _strip(json.loads(obj))
        except ValueError:
            return obj
    return obj


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def _same(a, b, where: str, out: list[str]) -> None:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(_bytes(a), _bytes(b))
        ):
            out.append(f"{where}: tensors differ")
    elif isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k in WALL or any(where.endswith(w) and k == key for w, key in UNSEEDED):
                continue
            if k not in a or k not in b:
                out.append(f"{where}.{k}: only in one")
            else:
                _same(a[k], b[k], f"{where}.{k}", out)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            out.append(f"{where}: lengths {len(a)} != {len(b)}")
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            _same(x, y, f"{where}[{i}]", out)
    elif _strip(a) != _strip(b):
        out.append(f"{where}: {str(_strip(a))[:80]} != {str(_strip(b))[:80]}")


def _load(path: Path):
    if path.suffix == ".svg":  # matplotlib stamps the date and names paths by random ids
        text = re.sub(r"<dc:date>[^<]*</dc:date>", "", path.read_text())
        return re.sub(r'(id|href)="#?[^"]*"|url\(#[^)]*\)', "", text)
    if path.suffix == ".html":  # the visible text, whitespace folded
        text = re.sub(r"<style.*?</style>|<[^>]+>", " ", path.read_text(), flags=re.S)
        return re.sub(r"\s+", " ", html.unescape(text)).strip().split(" ")
    if path.suffix == ".pt":
        return torch.load(path, map_location="cpu", weights_only=True)
    if path.suffix == ".json":
        return json.loads(path.read_text())
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    return None


def main(a: Path, b: Path) -> int:
    files = sorted(
        {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
        | {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
    )
    identical, equal_but_times, differ = [], [], []
    for rel in files:
        pa, pb = a / rel, b / rel
        if not (pa.exists() and pb.exists()):
            differ.append(f"{rel}: only in one directory")
            continue
        ha = hashlib.sha256(pa.read_bytes()).hexdigest()
        hb = hashlib.sha256(pb.read_bytes()).hexdigest()
        if ha == hb:
            identical.append(f"{ha[:16]}  {rel}")
            continue
        oa, ob = _load(pa), _load(pb)
        if oa is None:
            differ.append(f"{rel}: bytes differ")
            continue
        problems: list[str] = []
        _same(oa, ob, str(rel), problems)
        (differ if problems else equal_but_times).extend(problems or [str(rel)])
    print(f"byte-identical ({len(identical)}):")
    print("\n".join("  " + s for s in identical))
    print(f"equal except wall-clock fields ({len(equal_but_times)}):")
    print("\n".join("  " + s for s in equal_but_times))
    print(f"DIFFERENT ({len(differ)}):")
    print("\n".join("  " + s for s in differ))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
