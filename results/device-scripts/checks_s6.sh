# Session 6 call (machine alone): the Cauchy exp-sum benchmark after the sync-free rewrite, its host/GPU
# profile, then the matrix-free kernel tests and the GPU-only trainer memory-field test on CUDA.
. results/device-scripts/device_env.sh
echo "== bench"; timeout 330 python3 -m benchmarks.kernels_matfree --out $OUT --kinds cauchy,sdpa 2>&1 \
  | grep -v Warn | tee $OUT/bench.log | tail -40; echo "t=$(left 0)"
echo "== profile"; for b in "" --backward; do PYTHONPATH=. timeout 45 python3 results/device-scripts/profile_cauchy.py $b 2>&1 \
  | grep -v Warn | tee -a $OUT/profile_cauchy.log | cut -c1-180 | head -30; done; echo "t=$(left 0)"
echo "== tests"; timeout $(left 570) python3 -m pytest tests/kernels/test_matfree.py tests/ablations/test_trainer_runner.py \
  -q -n 8 -p no:cacheprovider -rfEs > $OUT/pytest_matfree.log 2>&1; echo rc=$?; tail -15 $OUT/pytest_matfree.log
echo "t=$(left 0)"
