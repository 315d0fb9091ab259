# One machine, one call to start: env check, MPS, kernel precheck, GPU tests (niced, background), grid daemon.
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
rm -rf /root/mzsrc && mkdir -p /root/mzsrc /root/mz && cp -r . /root/mzsrc/ && cd /root/mzsrc
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch,triton,numpy;print('torch',torch.__version__,'triton',triton.__version__,'numpy',numpy.__version__)"
nvidia-cuda-mps-control -d && echo mps-started; sleep 1
timeout 60 python3 -c "import torch; x=torch.randn(100,100,device='cuda'); print('mps test', float((x@x).sum()))" || { echo quit | nvidia-cuda-mps-control; echo mps-failed; }
echo "MPS on; jobs ${JOBS:-14}" > /root/mz/times.txt
setsid nohup bash .device/grids.sh > /root/mz/grids.log 2>&1 < /dev/null &
(setsid nohup nice -n 19 python3 -m pytest tests/kernels tests/mixers/test_gpu.py -q -p no:cacheprovider -rs > /root/mz/gpu_tests.log 2>&1 < /dev/null &)
timeout 200 python3 .device/precheck.py 2>&1 | tail -8
sleep ${WAIT:-60}; bash .device/poll.sh 1
