# Session 7, last call: the final code. The Chebyshev benchmark rows (all L), then the Chebyshev kernel tests and the
# mixer blocks on CUDA (tests/mixers/test_gpu.py: every mixer, the Vandermonde one through the fused kernels).
. results/device-scripts/device_env.sh
echo "== bench"; timeout 200 python3 -m benchmarks.kernels_matfree --out $OUT --kinds vandermonde --methods chebyshev 2>&1 \
  | grep -v Warn > $OUT/bench.log; tail -8 $OUT/bench.log | grep -v "^{"; echo "t=$(left 0)"
echo "== tests"; timeout $(left 500) python3 -m pytest tests/kernels/test_chebyshev.py tests/mixers/test_gpu.py -q -n 8 \
  -p no:cacheprovider -rfEs > $OUT/pytest_s7d.log 2>&1; echo rc=$?; tail -4 $OUT/pytest_s7d.log; echo "t=$(left 0)"
