# Session 5, machine 2: the Hydra rows of table2 (6 runs) and table3 without its Hydra row (12 runs; its Hydra
# runs are table2's, same run ids) at once, no MPS; GPU kernel tests beside them on 2 workers.
mkdir -p /root/mz
(sleep 20; cd /root/mzsrc && setsid nohup timeout 1500 python3 -m pytest tests/kernels -q -n 2 -p no:cacheprovider -rfE \
  > /root/mz/pytest_kernels.log 2>&1 < /dev/null &) &
PARALLEL=1 GRID_SPECS="table2:model.mixer=quasiseparable@6 table3:model.mixer=semiseparable|bidir_add|bidir_mult|bidir_concat@9" \
  WAIT=${WAIT:-420} bash results/device-scripts/start_grid.sh
