# Session 8 (written without a device; for the next session's first call): every kernel launch of the matrix-free
# products and the scans now goes through kernels/_launch.py's cache of compiled kernels (on by default), which
# hands the launcher tensors as addresses. Its check on real CUDA with Triton 3.6: the whole kernel suite with the
# structured Cauchy / Vandermonde tests and the mixer blocks on the GPU (session 7's checks_s7g.sh set: 545 passed
# in 319 s), then the same with the cache off for the scans' and products' tests that failed, if any.
. results/device-scripts/device_env.sh
timeout 450 python3 -m pytest tests/kernels tests/structured/test_cauchy.py tests/structured/test_vandermonde.py \
  tests/structured/test_vandermonde_chebyshev.py tests/mixers/test_gpu.py -q -n 8 -p no:cacheprovider -rfEs \
  > $OUT/pytest_s8.log 2>&1; echo rc=$?; tail -3 $OUT/pytest_s8.log; echo "t=$(left 0)"
if grep -q "^FAILED" $OUT/pytest_s8.log; then
  grep "^FAILED" $OUT/pytest_s8.log | sed 's/^FAILED //; s/ - .*//' | head -40 > $OUT/failed.txt
  MIXERZOO_DIRECT_LAUNCH=0 timeout $(left 580) python3 -m pytest $(cat $OUT/failed.txt) -q -n 8 -p no:cacheprovider \
    > $OUT/pytest_s8_nocache.log 2>&1; echo "cache off, the failed ones: rc=$?"; tail -2 $OUT/pytest_s8_nocache.log
fi
