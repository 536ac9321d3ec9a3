"""Regenerate qconv/data/kernels/ort_kernels.json from onnxruntime's docs/OperatorKernels.md.

Usage: python scripts/regen_ort_kernels.py path/to/OperatorKernels.md [out.json]

Each table row of the document is ``|Op|Domain|Versions|Type constraints|`` inside a provider section
(``## Operators implemented by CPUExecutionProvider``); continuation rows (``|||13+|...|``) repeat the op
above them with another version range.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

SECTION = re.compile(r"Operators implemented by (\w+ExecutionProvider)")
TYPES = re.compile(r"\*\*(\w+)\*\* = ([^*]+?)(?=<br/>|$)")


def split_types(text: str) -> list[str]:
    """Top-level comma split, written without spaces: 'map(int64, tensor(float))' stays one type."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p.replace(" ", "") for p in parts if p.strip()]


DOMAIN = re.compile(r"\*\*Operator Domain:\*\* \*([\w.]+)\*")


def parse(text: str) -> list[dict]:
    records, provider, domain, op = [], None, None, None
    for line in text.splitlines():
        section = SECTION.search(line)
        if section:
            provider, domain, op = section.group(1), None, None
            continue
        found = DOMAIN.search(line)
        if found:
            domain, op = found.group(1), None
            continue
        if not provider or not domain or not line.startswith("|") or line.startswith(("|---", "| Op Name")):
            continue
        row = line.strip()
        cells = [c.strip() for c in row[1 : -1 if row.endswith("|") else None].split("|")]
        if len(cells) < 4:
            continue
        name, _, versions, constraints = cells[:4]
        op = name or op
        match = re.fullmatch(r"\[(\d+), ?(\d+)\]|(\d+)(\+)?", versions)
        if op is None or not match:
            continue
        if match.group(1):
            since, until = int(match.group(1)), int(match.group(2))
        else:
            since = int(match.group(3))
            until = None if match.group(4) else since
        types = {c: split_types(ts) for c, ts in TYPES.findall(constraints)}
        records.append(
            {
                "provider": provider,
                "domain": domain,
                "op": op,
                "since_version": since,
                "until_version": until,
                "version_raw": versions,
                "types": types,
            }
        )
    return records


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    records = parse(Path(argv[1]).read_text(encoding="utf-8"))
    out = Path(argv[2]) if len(argv) > 2 else Path(__file__).parents[1] / "qconv/data/kernels/ort_kernels.json"
    out.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    print(f"{len(records)} kernel records -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
