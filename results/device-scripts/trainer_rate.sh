# Steps/s of real lab runs (the trainer, not profile_lab_step.py) for one mixer, alone and N at once, without
# and with MPS. Session 4 saw 1.1 steps/s per Hydra run with 6 at once under MPS, where profile_lab_step.py
# gives 27.6 alone and 8-10 each with 4 at once: this tells whether the trainer or the concurrency is slow.
#   MIXER=quasiseparable N=6 SECS=100 bash results/device-scripts/trainer_rate.sh
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
MIXER=${MIXER:-quasiseparable}; N=${N:-6}; SECS=${SECS:-100}; W=/root/mzrate
rate() {  # label dir: steps/s of each run's MLM stage between its first and last logged step
  python3 - "$1" "$2" <<'PY'
import glob, json, sys
for f in sorted(glob.glob(sys.argv[2] + "/*/metrics.jsonl")):
    rows = [json.loads(l) for l in open(f) if '"time_s"' in l]
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        print(f"{sys.argv[1]} {f.split('/')[-2]}: {(b['step'] - a['step']) / (b['time_s'] - a['time_s']):.1f} steps/s "
              f"(steps {a['step']}..{b['step']})")
PY
}
go() {  # label n
  rm -rf $W/$1; mkdir -p $W/$1
  seeds=$(seq -s, 0 $(( $2 - 1 )))
  timeout $SECS python3 -m ablations.cli ablate table2 --scale lab --seeds $seeds --jobs $2 --out $W/$1 --no-progress \
    --filter "model.mixer=$MIXER" --filter "model.sequence_aligned=true" > $W/$1.log 2>&1
  # the pool's workers outlive a killed parent: stop them before the next measurement (bracketed patterns
  # so that pkill does not match this script's own command line)
  pkill -9 -f "ablations[.]cli"; pkill -9 -f "multiprocessing[.]spawn"; sleep 3
  rate $1 $W/$1
}
go alone 1
go "x$N" $N
# The model step alone, N at once: plain, then with the trainer's mask, selected head and clipping (host syncs)
for flag in "" --like-trainer; do
  for i in $(seq $N); do
    PYTHONPATH=. timeout 120 python3 results/device-scripts/profile_lab_step.py --mixers $MIXER --steps 60 \
      --profile-top 0 $flag 2>&1 | grep "^==" | cut -c1-40 | sed "s/^/profile x$N ${flag:-plain} /" &
  done; wait
done
nvidia-cuda-mps-control -d && go "mps-x$N" $N; echo quit | timeout 20 nvidia-cuda-mps-control
