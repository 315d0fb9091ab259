# Later calls: wait up to $1 s (or until the daemon is done), report progress, pack finished runs into $OUT.
W=${1:-500}; t=0
while [ $t -lt $W ] && [ ! -f /root/mz/DONE ]; do sleep 10; t=$((t+10)); done
cat /root/mz/times.txt 2>/dev/null
for g in table2 table3; do
  f=/root/mz/$g.log; [ -f $f ] || continue
  echo "== $g: $(grep -c ' ok ' $f) ok, $(grep -c FAILED $f) failed"; grep FAILED $f | head -5; tail -2 $f
  for d in /root/mz/$g-lab/*/; do [ -f $d/summary.json ] || echo "running $(basename $d) $(tail -1 $d/metrics.jsonl 2>/dev/null | cut -c1-150)"; done | head -24
done
tail -2 /root/mz/gpu_use.csv; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
cd /root/mz && tar --exclude=ckpt -czf $OUT/runs.tgz table2-lab table3-lab times.txt gpu_use.csv *.log 2>/dev/null; ls -la $OUT
