"""Print the eval accuracy curve of every stage of every run under a results dir."""
import json, sys, pathlib
for run in sorted(pathlib.Path(sys.argv[1]).glob("*/metrics.jsonl")):
    curves, last_t = {}, {}
    for line in run.read_text().splitlines():
        r = json.loads(line)
        if "split" in r and "accuracy" in r:
            curves.setdefault((r["stage"], r["split"]), []).append(f"{r['step']}:{r['accuracy']:.3f}")
        if "time_s" in r:
            last_t[r["stage"]] = round(r["time_s"])
    for (st, sp), c in curves.items():
        print(run.parent.name[:20], st, sp, f"t={last_t.get(st)}", " ".join(c))
