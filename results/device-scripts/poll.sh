# Later calls: wait up to $1 s (or until the daemon is done), report progress, pack finished runs into $OUT.
# For each unfinished run: its stage, step, steps/s over its last 5 log rows, and peak/reserved GPU memory.
W=${1:-500}; t=0
while [ $t -lt $W ] && [ ! -f /root/mz/DONE ]; do sleep 10; t=$((t+10)); done
cat /root/mz/times.txt 2>/dev/null
for g in table2 table3; do
  f=/root/mz/$g.log; [ -f $f ] || continue
  echo "== $g: $(grep -c ' ok ' $f) ok, $(grep -c FAILED $f) failed"; grep FAILED $f | head -5; tail -2 $f
done
python3 - <<'PY'
import glob, json, os
for f in sorted(glob.glob("/root/mz/*-lab/*/metrics.jsonl")):
    if os.path.exists(os.path.join(os.path.dirname(f), "summary.json")):
        continue
    rows = [json.loads(l) for l in open(f) if '"time_s"' in l]
    if not rows:
        continue
    last = [r for r in rows if r["stage"] == rows[-1]["stage"]][-6:]
    a, b = last[0], last[-1]
    rate = (b["step"] - a["step"]) / max(b["time_s"] - a["time_s"], 1e-9) if len(last) > 1 else float("nan")
    print(f"running {f.split('/')[-2][:48]} {b['stage']} step {b['step']} {rate:.1f} steps/s "
          f"peak {b.get('peak_mem_gb')} GB reserved {b.get('reserved_gb')} GB retries {b.get('alloc_retries')}")
PY
tail -2 /root/mz/gpu_use.csv; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
echo "GPU memory per process (MiB): $(nvidia-smi --query-compute-apps=used_memory --format=csv,noheader,nounits | tr '\n' ' ')"
[ -f /root/mz/pytest_kernels.log ] && { echo "pytest tests/kernels:"; grep -E "passed|failed|FAILED|ERROR" /root/mz/pytest_kernels.log | tail -8; }
cd /root/mz && tar --exclude=ckpt -czf $OUT/runs.tgz table2-lab table3-lab times.txt gpu_use.csv *.log 2>/dev/null; ls -la $OUT
