# Daemon: lab-scale grids one after another (PARALLEL=1: at once), 3 seeds, timed; samples GPU use every 15 s.
# GRID_SPECS: space-separated GRID[:FILTER][@JOBS] items (JOBS per grid, else $JOBS). Session 3 ran
#   GRID_SPECS="table2:model.mixer=dense|dft|toeplitz|vandermonde|cauchy|low_rank|attention" JOBS=18
# and the rest is GRID_SPECS="table2:model.mixer=quasiseparable@6 table3@8" (one --out per grid, so runs resume).
# Expandable segments: runs sharing one GPU otherwise fragment their caching allocators (the scored-position
# count changes every MLM step), and a run that hits the card's limit retries with cudaFree, which stalls all.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
cd /root/mzsrc
JOBS=${JOBS:-18}
GRID_SPECS=${GRID_SPECS:-"table2 table3"}
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 15 > /root/mz/gpu_use.csv 2>&1 &
one() {  # spec: one grid, timed
  local spec=$1 jobs=$JOBS
  case $spec in *@*) jobs=${spec##*@}; spec=${spec%@*};; esac
  local g=${spec%%:*} f=${spec#*:}
  local filter=(); [ "$f" != "$spec" ] && filter=(--filter "$f")
  local t0; t0=$(date +%s); echo "$spec start $(date -u +%FT%TZ) jobs=$jobs" >> /root/mz/times.txt
  python3 -m ablations.cli ablate $g --scale lab --seeds 0,1,2 --jobs $jobs --out /root/mz/$g-lab --no-progress \
    "${filter[@]}" >> /root/mz/$g.log 2>&1
  echo "$spec rc=$? end $(date -u +%FT%TZ) wall_s=$(( $(date +%s) - t0 ))" >> /root/mz/times.txt
}
# PARALLEL=1: all grids at once (one pool each, sharing the GPU), else one after another.
pids=()
for spec in $GRID_SPECS; do
  if [ "${PARALLEL:-0}" = 1 ]; then one "$spec" & pids+=($!); else one "$spec"; fi
done
[ ${#pids[@]} -gt 0 ] && wait "${pids[@]}"
echo done > /root/mz/DONE
