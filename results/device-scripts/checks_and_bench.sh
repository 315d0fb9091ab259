# Device call 1 of session 3 (machine alone, no MPS): peers, lab-step profile, fixed tests, scan benchmark with peers.
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
T0=$(date +%s); el() { echo "t=$(( $(date +%s) - T0 ))"; }
rm -rf /root/mzsrc && mkdir -p /root/mzsrc /root/mz && cp -r . /root/mzsrc/ && cd /root/mzsrc
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/device.txt
echo "== profile"; PYTHONPATH=. timeout 200 python3 results/device-scripts/profile_lab_step.py 2>&1 | grep -v Warning | tee $OUT/profile_lab_step.log | cut -c1-200 | head -120; el
echo "== peers"; bash results/device-scripts/install_peers.sh /root/peers 2>&1 | tail -4
PYTHONPATH=/root/peers:. timeout 120 python3 results/device-scripts/check_peers.py 2>&1 | tail -20 | tee $OUT/check_peers.log; el
echo "== tests"; timeout 60 python3 -m pytest tests/kernels/test_ssd.py -q -p no:cacheprovider -k "wide_state or compiled_shared" 2>&1 | tail -3
PYTHONPATH=. timeout 100 python3 results/device-scripts/precheck.py 2>&1 | tail -6 | tee $OUT/precheck.log; el
echo "== bench"; mkdir -p $OUT/scans; PYTHONPATH=/root/peers:. timeout $(( 565 - ($(date +%s) - T0) )) python3 -m benchmarks.kernels --device cuda --out $OUT/scans --only scans --tune-bwd > $OUT/scans/log.txt 2>&1; echo rc=$?
grep -v "^tune" $OUT/scans/log.txt | tail -45; el
