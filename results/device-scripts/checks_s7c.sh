# Session 7, final call: the benchmark rows chebyshev (all L) at the final kernels/chebyshev.py, then the CUDA tests
# of all kernels and of the structured Cauchy / Vandermonde classes.
. results/device-scripts/device_env.sh
echo "== bench"; timeout 200 python3 -m benchmarks.kernels_matfree --out $OUT --kinds vandermonde --methods chebyshev 2>&1 \
  | grep -v Warn > $OUT/bench.log; tail -8 $OUT/bench.log | grep -v "^{"; echo "t=$(left 0)"
echo "== tests"; timeout $(left 560) python3 -m pytest tests/kernels tests/structured/test_cauchy.py \
  tests/structured/test_vandermonde.py tests/structured/test_vandermonde_chebyshev.py -q -n 8 -p no:cacheprovider -rfEs \
  > $OUT/tests-kernels-cuda.log 2>&1; echo rc=$?; tail -4 $OUT/tests-kernels-cuda.log; echo "t=$(left 0)"
