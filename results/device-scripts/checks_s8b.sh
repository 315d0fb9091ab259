# Session 8 (for the next session's second call): host time with the real driver, and the L = 512 / 2048 rows.
#  1. benchmarks/host_launch.py --device cuda: host us per launch and per product (Chebyshev, exp-sum, the
#     quasiseparable scan), JITFunction.run vs kernels/_launch.py's cache; and the L = 512 target itself, as the
#     matrix-free benchmark measures it: 5 eager do_bench medians each with the cache on and off, the replay, the
#     speed-up over the paper's committed median (the JSON's "eager_L512");
#  2. the --quick rows of both matrix-free products with the cache on (the default), then off (into $OUT/jit);
#  3. profile_cauchy.py --backward --cprofile: where an eager Cauchy fwd+bwd's host time goes now.
. results/device-scripts/device_env.sh
timeout 240 python3 -m benchmarks.host_launch --device cuda --out $OUT 2>&1 | grep -v Warn > $OUT/host_launch.log
tail -32 $OUT/host_launch.log; echo "t=$(left 0)"
timeout $(left 400) python3 -m benchmarks.kernels_matfree --out $OUT --kinds cauchy,vandermonde \
  --methods expsum_triton,chebyshev --quick 2>&1 | grep -v Warn > $OUT/bench.log; tail -6 $OUT/bench.log | grep -v "^{"
mkdir -p $OUT/jit && MIXERZOO_DIRECT_LAUNCH=0 timeout $(left 580) python3 -m benchmarks.kernels_matfree --out $OUT/jit \
  --kinds cauchy,vandermonde --methods expsum_triton,chebyshev --quick 2>&1 | grep -v Warn > $OUT/jit/bench.log
tail -6 $OUT/jit/bench.log | grep -v "^{"; echo "t=$(left 0)"
# where an eager Cauchy fwd+bwd's host time goes now (torch.profiler host ops and kernels, then cProfile)
PYTHONPATH=. timeout $(left 590) python3 results/device-scripts/profile_cauchy.py --backward --cprofile \
  > $OUT/profile-cauchy-s8.log 2>&1; echo "profile rc=$?"; head -3 $OUT/profile-cauchy-s8.log; echo "t=$(left 0)"
