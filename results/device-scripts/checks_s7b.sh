# Session 7, calls 2 and later: after a change to kernels/chebyshev.py, its own tests on CUDA, the benchmark rows
# chebyshev (all L; `--quick` via CHEB_QUICK=1) and the profile at L = 512 (forward, forward+backward).
. results/device-scripts/device_env.sh
echo "== tests"; timeout 150 python3 -m pytest tests/kernels/test_chebyshev.py tests/structured/test_vandermonde_chebyshev.py \
  -q -n 8 -p no:cacheprovider -rfEs > $OUT/pytest_s7b.log 2>&1; echo rc=$?; tail -3 $OUT/pytest_s7b.log; echo "t=$(left 0)"
echo "== bench"; timeout $(left 420) python3 -m benchmarks.kernels_matfree --out $OUT --kinds vandermonde \
  --methods chebyshev ${CHEB_QUICK:+--quick} 2>&1 | grep -v Warn > $OUT/bench.log; tail -8 $OUT/bench.log | grep -v "^{"
echo "t=$(left 0)"
echo "== profile"; for b in "" --backward; do PYTHONPATH=. timeout 40 python3 results/device-scripts/profile_cauchy.py \
  --kind vandermonde $b 2>&1 | grep -v Warn | tee -a $OUT/profile_chebyshev.log | grep -E "ms/call|_kernel|Product" | cut -c1-160; done
echo "t=$(left 0)"
