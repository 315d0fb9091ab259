# Session 7: the Cauchy exp-sum autograd Function with the same host-time cuts as the Chebyshev one (flattening and
# casts inside the Function: no view or cast nodes; intermediates on ctx): its CUDA tests, the profile's host
# time, and the benchmark rows expsum_triton / expsum_triton_eps1e-6 (all L).
. results/device-scripts/device_env.sh
echo "== tests"; timeout 200 python3 -m pytest tests/kernels/test_matfree.py tests/structured/test_cauchy.py -k "expsum or exp_sum" \
  -q -n 8 -p no:cacheprovider -rfEs > $OUT/pytest_s7f.log 2>&1; echo rc=$?; tail -2 $OUT/pytest_s7f.log; echo "t=$(left 0)"
echo "== profile"; PYTHONPATH=. timeout 60 python3 results/device-scripts/profile_cauchy.py --backward 2>&1 | grep -v Warn \
  > $OUT/profile_cauchy.log; grep "ms/call" $OUT/profile_cauchy.log; echo "t=$(left 0)"
echo "== bench"; timeout $(left 500) python3 -m benchmarks.kernels_matfree --out $OUT --kinds cauchy \
  --methods expsum_triton,expsum_triton_eps1e-6 2>&1 | grep -v Warn > $OUT/bench.log; tail -14 $OUT/bench.log | grep -v "^{"
echo "t=$(left 0)"
