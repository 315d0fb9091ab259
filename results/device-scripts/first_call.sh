# Device call 1 (machine alone, no MPS): kernel checks + GPU tests, with an MQAR probe beside them.
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
T0=$(date +%s)
rm -rf /root/mzsrc && mkdir -p /root/mzsrc /root/mz && cp -r . /root/mzsrc/ && cd /root/mzsrc
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/device.txt
python3 -c "import torch,triton,numpy;print('torch',torch.__version__,'triton',triton.__version__,'numpy',numpy.__version__)" | tee -a $OUT/device.txt
setsid nohup python3 -m ablations.cli ablate results/mqar-probe/mqarprobe.yaml --jobs 3 --out /root/mz/probe --no-progress > /root/mz/probe.log 2>&1 < /dev/null &
echo "== smem"; timeout 150 python3 -m pytest tests/kernels/test_ssd.py -q -p no:cacheprovider -k compiled_shared_memory -rs 2>&1 | tail -15 | tee $OUT/t_smem.log
echo "== precheck"; PYTHONPATH=. timeout 150 python3 results/device-scripts/precheck.py 2>&1 | tail -12 | tee $OUT/precheck.log
echo "== gpu tests t=$(( $(date +%s) - T0 ))"
timeout $(( 520 - ($(date +%s) - T0) )) python3 -m pytest tests/kernels tests/mixers/test_gpu.py -q -p no:cacheprovider -rs --durations=15 > $OUT/gpu_tests.log 2>&1; echo "pytest rc=$?"
tail -40 $OUT/gpu_tests.log
echo "== probe t=$(( $(date +%s) - T0 ))"
while [ $(( $(date +%s) - T0 )) -lt 545 ] && pgrep -f "mqarprobe" > /dev/null; do sleep 5; done
tail -5 /root/mz/probe.log
python3 results/mqar-probe/probe_summary.py /root/mz/probe
cd /root/mz && tar --exclude=ckpt -czf $OUT/probe.tgz probe probe.log
echo "t=$(( $(date +%s) - T0 ))"
