# Session 7, after the final review: the prep kernels of the exp-sum and Chebyshev paths share one node-extremes
# helper (kernels/_matfree_tiled.py). Their CUDA tests, and the quick benchmark rows as a regression check.
. results/device-scripts/device_env.sh
timeout 200 python3 -m pytest tests/kernels/test_chebyshev.py tests/kernels/test_matfree.py tests/structured/test_cauchy.py \
  tests/structured/test_vandermonde_chebyshev.py -k "expsum or exp_sum or chebyshev or Chebyshev or omega" -q -n 8 \
  -p no:cacheprovider -rfEs > $OUT/pytest_s7h.log 2>&1; echo rc=$?; tail -2 $OUT/pytest_s7h.log; echo "t=$(left 0)"
timeout $(left 300) python3 -m benchmarks.kernels_matfree --out $OUT --kinds cauchy,vandermonde \
  --methods expsum_triton,chebyshev --quick 2>&1 | grep -v Warn > $OUT/bench.log; tail -6 $OUT/bench.log | grep -v "^{"
echo "t=$(left 0)"
