# Daemon: table2 then table3 at lab scale, 3 seeds each, timed; samples GPU use every 15 s.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cd /root/mzsrc
JOBS=${JOBS:-14}
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 15 > /root/mz/gpu_use.csv 2>&1 &
for g in table2 table3; do
  t0=$(date +%s); echo "$g start $(date -u +%FT%TZ) jobs=$JOBS" >> /root/mz/times.txt
  python3 -m ablations.cli ablate $g --scale lab --seeds 0,1,2 --jobs $JOBS --out /root/mz/$g-lab --no-progress > /root/mz/$g.log 2>&1
  echo "$g rc=$? end $(date -u +%FT%TZ) wall_s=$(( $(date +%s) - t0 ))" >> /root/mz/times.txt
done
echo done > /root/mz/DONE
