"""Steps/s of each run in a grid output directory, per stage, from its metrics.jsonl: between the stage's
first and last logged training steps, evaluations included. Reproduces the per-run rates quoted in
results/table2-lab/README.md ("Session 5").

    python results/device-scripts/run_rates.py results/table2-lab/session5-before-fix
"""
import glob
import json
import os
import sys

for f in sorted(glob.glob(os.path.join(sys.argv[1], "*", "metrics.jsonl"))):
    rows = [json.loads(line) for line in open(f) if '"time_s"' in line]
    out = []
    for stage in dict.fromkeys(r["stage"] for r in rows):
        st = [r for r in rows if r["stage"] == stage]
        if len(st) > 1:
            a, b = st[0], st[-1]
            out.append(f"{stage} {(b['step'] - a['step']) / (b['time_s'] - a['time_s']):.1f} steps/s "
                       f"(steps {a['step']}-{b['step']}, first log at {a['time_s']:.0f} s)")
    print(f.split(os.sep)[-2], "|", "; ".join(out))
