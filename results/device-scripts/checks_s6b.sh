# Session 6, call 2 (machine alone): the Cauchy exp-sum benchmark after the chunk / host-path changes (eager and
# CUDA-graph timings), its host/GPU profile, then the exp-sum and cosine-feature kernel tests on CUDA.
. results/device-scripts/device_env.sh
echo "== bench"; timeout 400 python3 -m benchmarks.kernels_matfree --out $OUT --kinds cauchy,sdpa 2>&1 \
  | grep -v Warn > $OUT/bench.log; tail -45 $OUT/bench.log | grep -v "^{"; echo "t=$(left 0)"
echo "== profile"; for b in "" --backward; do PYTHONPATH=. timeout 40 python3 results/device-scripts/profile_cauchy.py $b 2>&1 \
  | grep -v Warn | tee -a $OUT/profile_cauchy.log | grep -E "ms/call|_kernel|Product" | cut -c1-160; done; echo "t=$(left 0)"
echo "== tests"; timeout $(left 575) python3 -m pytest tests/kernels/test_matfree.py tests/kernels/test_cosine_features.py \
  -k "expsum or cosine or Cosine or chebyshev or large_angles or bad_arguments" -q -n 8 -p no:cacheprovider -rfEs \
  > $OUT/pytest_s6b.log 2>&1; echo rc=$?; tail -6 $OUT/pytest_s6b.log; echo "t=$(left 0)"
