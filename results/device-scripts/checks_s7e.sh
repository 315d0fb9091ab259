# Session 7: after the host-time cuts (one table buffer instead of three, one generic rows kernel with fewer
# arguments): the host breakdown, the Chebyshev tests, and the benchmark rows (all L).
. results/device-scripts/device_env.sh
echo "== host"; PYTHONPATH=. timeout 120 python3 results/device-scripts/host_breakdown.py 2>&1 | grep -v Warn \
  | tee $OUT/host_breakdown.log; echo "t=$(left 0)"
echo "== tests"; timeout 150 python3 -m pytest tests/kernels/test_chebyshev.py tests/structured/test_vandermonde_chebyshev.py \
  -q -n 8 -p no:cacheprovider -rfEs > $OUT/pytest_s7e.log 2>&1; echo rc=$?; tail -2 $OUT/pytest_s7e.log; echo "t=$(left 0)"
echo "== bench"; timeout $(left 500) python3 -m benchmarks.kernels_matfree --out $OUT --kinds vandermonde --methods chebyshev \
  2>&1 | grep -v Warn > $OUT/bench.log; tail -8 $OUT/bench.log | grep -v "^{"; echo "t=$(left 0)"
