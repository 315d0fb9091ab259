# Session 5 call A (alone, no MPS): GPU kernel tests, lab-step rates with default vs per-role backward, Cauchy profile.
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
T0=$(date +%s); left() { echo $(( $1 - ($(date +%s) - T0) )); }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/device.txt
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)" | tee -a $OUT/device.txt
echo "== tests"; timeout 280 python3 -m pytest tests/kernels -q -n 8 -p no:cacheprovider -rfE > $OUT/pytest_kernels.log 2>&1; echo rc=$?
tail -15 $OUT/pytest_kernels.log; echo "t=$(left 0)"
for tun in "" "bwd_split=True bwd_split_launch=per_role"; do
  PYTHONPATH=. timeout 100 python3 results/device-scripts/profile_lab_step.py --mixers quasiseparable,semiseparable \
    --steps 40 --profile-top 0 --tuning $tun 2>&1 | grep "^==" | cut -c1-120 | tee -a $OUT/lab_step.log
done; echo "t=$(left 0)"
for b in "" --backward; do PYTHONPATH=. timeout $(( $(left 585) / 2 )) python3 results/device-scripts/profile_cauchy.py $b 2>&1 | grep -v Warn | tee -a $OUT/profile_cauchy.log | cut -c1-180 | head -40; done
echo "t=$(left 0)"
