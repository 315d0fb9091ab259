# Start the grid daemon (grids.sh; GRID_SPECS and JOBS pass through), then poll. MPS=1 runs it under CUDA MPS
# (session 3's 36 runs); session 5 runs the SSM rows without it: under MPS a fault in one client kills every
# client, and 4 concurrent Hydra steps ran as fast without it (session 4). Nothing else may use the GPU meanwhile.
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
rm -rf /root/mzsrc && mkdir -p /root/mzsrc /root/mz && cp -r . /root/mzsrc/ && cd /root/mzsrc
if [ "${MPS:-0}" = 1 ]; then
  nvidia-cuda-mps-control -d && echo mps-started; sleep 1
  timeout 60 python3 -c "import torch; x=torch.randn(100,100,device='cuda'); print('mps test', float((x@x).sum()))" || { echo quit | timeout 20 nvidia-cuda-mps-control; echo mps-failed; }
fi
echo "MPS=${MPS:-0}; jobs ${JOBS:-18}; specs ${GRID_SPECS:-table2 table3}" >> /root/mz/times.txt
setsid nohup bash results/device-scripts/grids.sh > /root/mz/grids.log 2>&1 < /dev/null &
sleep 5; bash results/device-scripts/poll.sh ${WAIT:-520}
