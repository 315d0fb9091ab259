# Stop everything, restart MPS clean, rerun the grids with the torch paths (MIXERZOO_KERNELS=off).
pkill -f "bash .device/grid[s].sh"; pkill -9 -f "[a]blations.cli"; pkill -9 -f "[m]ultiprocessing.spawn"; pkill -9 -f "[p]ytest"; pkill nvidia-smi; sleep 3
echo quit | nvidia-cuda-mps-control; sleep 3; nvidia-smi --query-gpu=memory.used --format=csv,noheader
nvidia-cuda-mps-control -d && echo mps-restarted; sleep 1
mkdir -p /root/mz/failed1 && mv /root/mz/table2-lab /root/mz/table3-lab /root/mz/table2.log /root/mz/table3.log /root/mz/gpu_tests.log /root/mz/failed1/ 2>/dev/null
echo "restart $(date -u +%FT%TZ): MPS restarted, MIXERZOO_KERNELS=off, jobs 14 (first attempt: MPS fault, see failed1)" >> /root/mz/times.txt
cd /root/mzsrc && MIXERZOO_KERNELS=off setsid nohup bash .device/grids.sh > /root/mz/grids3.log 2>&1 < /dev/null &
sleep ${WAIT:-240}
for d in /root/mz/table2-lab/*/; do echo "$(basename $d) $(tail -1 $d/metrics.jsonl 2>/dev/null | cut -c1-160)"; done | head -16
cat /root/mz/times.txt; grep -c FAILED /root/mz/table2.log
