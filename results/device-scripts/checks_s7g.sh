# Session 7, last call: every kernel test with the structured Cauchy / Vandermonde tests, and the mixer blocks on CUDA,
# at the final code.
. results/device-scripts/device_env.sh
timeout 560 python3 -m pytest tests/kernels tests/structured/test_cauchy.py tests/structured/test_vandermonde.py \
  tests/structured/test_vandermonde_chebyshev.py tests/mixers/test_gpu.py -q -n 8 -p no:cacheprovider -rfEs \
  > $OUT/tests-kernels-cuda.log 2>&1; echo rc=$?; tail -4 $OUT/tests-kernels-cuda.log; echo "t=$(left 0)"
