# Session 7, call 1: the fused Chebyshev kernels of the Vandermonde product (kernels/chebyshev.py) on CUDA: their tests
# and the Vandermonde / Chebyshev tests, the benchmark rows chebyshev / chebyshev_torch (all L), and a profile at L = 512.
. results/device-scripts/device_env.sh
echo "== tests"; timeout 200 python3 -m pytest tests/kernels/test_chebyshev.py tests/structured/test_vandermonde_chebyshev.py \
  tests/structured/test_vandermonde.py -q -n 8 -p no:cacheprovider -rfEs > $OUT/pytest_s7.log 2>&1; echo rc=$?
tail -8 $OUT/pytest_s7.log; echo "t=$(left 0)"
echo "== bench"; timeout $(left 420) python3 -m benchmarks.kernels_matfree --out $OUT --kinds vandermonde \
  --methods chebyshev,chebyshev_torch 2>&1 | grep -v Warn > $OUT/bench.log; tail -14 $OUT/bench.log | grep -v "^{"; echo "t=$(left 0)"
echo "== profile"; for b in "" --backward; do PYTHONPATH=. timeout 40 python3 results/device-scripts/profile_cauchy.py \
  --kind vandermonde $b 2>&1 | grep -v Warn | tee -a $OUT/profile_chebyshev.log | grep -E "ms/call|_kernel|Product" | cut -c1-160; done
echo "t=$(left 0)"
