# Session 8 (written without a device; for the next session's first call): the cached launch path
# (kernels/_launch.py, on by default) on real CUDA with Triton 3.6:
#  1. the CUDA tests of the kernels that use it (+ tests/kernels/test_launch.py's key test);
#  2. host time per launch and per product, JITFunction.run vs cached (benchmarks/host_launch.py --device cuda);
#  3. the L = 512 / 2048 rows of the two products, cached path on (the default), then off for comparison.
. results/device-scripts/device_env.sh
timeout 240 python3 -m pytest tests/kernels/test_chebyshev.py tests/kernels/test_matfree.py tests/kernels/test_launch.py \
  tests/structured/test_cauchy.py tests/structured/test_vandermonde_chebyshev.py \
  -k "expsum or exp_sum or chebyshev or Chebyshev or omega or launch or arg_key" -q -n 8 \
  -p no:cacheprovider -rfEs > $OUT/pytest_s8.log 2>&1; echo rc=$?; tail -2 $OUT/pytest_s8.log; echo "t=$(left 0)"
timeout 120 python3 -m benchmarks.host_launch --device cuda --out $OUT 2>&1 | grep -v Warn > $OUT/host_launch.log
tail -22 $OUT/host_launch.log; echo "t=$(left 0)"
timeout $(left 480) python3 -m benchmarks.kernels_matfree --out $OUT --kinds cauchy,vandermonde \
  --methods expsum_triton,chebyshev --quick 2>&1 | grep -v Warn > $OUT/bench.log; tail -6 $OUT/bench.log | grep -v "^{"
mkdir -p $OUT/jit && MIXERZOO_DIRECT_LAUNCH=0 timeout $(left 580) python3 -m benchmarks.kernels_matfree --out $OUT/jit \
  --kinds cauchy,vandermonde --methods expsum_triton,chebyshev --quick 2>&1 | grep -v Warn > $OUT/jit/bench.log
tail -6 $OUT/jit/bench.log | grep -v "^{"; echo "t=$(left 0)"
