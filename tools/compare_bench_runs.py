"""Compare two ``saga bench --out`` folders run by run: are the simulated results identical?

A run's file name is the hash of its whole config, which includes how its preset is written down
(a preset whose description or serialisation changed gets a new hash with the same behaviour).
This pairs runs by the rest of their config — the variant (preset name and parameters), the
workload, the simulator and cost model, or a replay's trace and policies — and compares every
result field except the CPU and wall times. Exit status 0 when every run of the first
folder has an identical twin in the second, 1 otherwise.

    python tools/compare_bench_runs.py results-before/ results-after/
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

TIMES = ("cpu_s", "wall_s")


def runs(folder: Path) -> dict[str, dict[str, Any]]:
    """Results of the stored runs under ``folder/runs``, keyed by what they simulate."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted((folder / "runs").glob("*.json")):
        stored = json.loads(path.read_text())
        cfg = {k: v for k, v in stored["config"].items() if k != "preset"}
        key = json.dumps(cfg, sort_keys=True)
        out[key] = {k: v for k, v in stored["result"].items() if k not in TIMES}
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    before, after = (runs(Path(a)) for a in argv)
    differing = 0
    for key, result in before.items():
        other = after.get(key)
        if other is None:
            differing += 1
            print(f"missing in {argv[1]}: {key}")
        elif json.dumps(result, sort_keys=True) != json.dumps(other, sort_keys=True):
            differing += 1
            fields = sorted(f for f in result if json.dumps(result[f]) != json.dumps(other.get(f)))
            print(f"differs ({', '.join(fields)}): {key}")
    print(f"{len(before)} runs in {argv[0]}, {len(after)} in {argv[1]}; differing: {differing}")
    return 1 if differing or not before else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
