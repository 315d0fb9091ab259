# Daemon: the table2 lab grid, rows without SSM kernels first, 3 seeds; samples GPU use every 15 s.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cd /root/mzsrc
JOBS=${JOBS:-18}
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 15 > /root/mz/gpu_use.csv 2>&1 &
t0=$(date +%s); echo "table2 non-SSM start $(date -u +%FT%TZ) jobs=$JOBS" >> /root/mz/times.txt
python3 -m ablations.cli ablate table2 --scale lab --seeds 0,1,2 --jobs $JOBS --out /root/mz/table2-lab --no-progress \
  --filter "model.mixer=dense|dft|toeplitz|vandermonde|cauchy|low_rank|attention" > /root/mz/table2.log 2>&1
echo "table2 non-SSM rc=$? end $(date -u +%FT%TZ) wall_s=$(( $(date +%s) - t0 ))" >> /root/mz/times.txt
echo done > /root/mz/DONE
