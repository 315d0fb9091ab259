# Session 7, call 3: where the host time of an eager Chebyshev (and Cauchy exp-sum) fwd+bwd goes at L = 512 (cProfile).
. results/device-scripts/device_env.sh
for kind in vandermonde cauchy; do PYTHONPATH=. timeout 60 python3 results/device-scripts/profile_cauchy.py --kind $kind \
  --backward --cprofile 2>&1 | grep -v Warn > $OUT/profile_host_$kind.log; grep "ms/call" $OUT/profile_host_$kind.log
  sed -n '/Ordered by/,$p' $OUT/profile_host_$kind.log | head -40 | cut -c1-150; done
