# Session 4 ran it from .device/ (carried). Daemon: the two remaining lab grids at once (one ablate process each), timed; GPU use every 15 s.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cd /root/mzsrc
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 15 > /root/mz/gpu_use.csv 2>&1 &
one() {  # GRID JOBS [FILTER]
  t0=$(date +%s); echo "$1 ${3:-} start $(date -u +%FT%TZ) jobs=$2" >> /root/mz/times.txt
  python3 -m ablations.cli ablate $1 --scale lab --seeds 0,1,2 --jobs $2 --out /root/mz/$1-lab --no-progress \
    ${3:+--filter "$3"} >> /root/mz/$1.log 2>&1
  echo "$1 ${3:-} rc=$? end $(date -u +%FT%TZ) wall_s=$(( $(date +%s) - t0 ))" >> /root/mz/times.txt
}
one table2 6 "model.mixer=quasiseparable" &
one table3 15 &
wait
echo done > /root/mz/DONE
