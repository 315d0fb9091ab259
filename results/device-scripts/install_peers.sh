#!/usr/bin/env bash
# Install the causal peers of benchmarks/kernels.py (mamba_ssm's Triton SSD, fla's chunk_simple_gla) from the
# wheels carried in .whl/ into a folder OUTSIDE the repo, for benchmarking only. No network needed.
#
#   bash results/device-scripts/install_peers.sh [TARGET]      # run from the repo root; TARGET = /root/peers
#   PYTHONPATH=TARGET:. python -m benchmarks.kernels ...
#
# .whl/ (gitignored) holds: mamba_ssm (built from its PyPI sdist with MAMBA_SKIP_CUDA_BUILD=TRUE
# MAMBA_FORCE_BUILD=TRUE: Python + Triton sources only), fla_core (pure Triton), einops (both import it) and
# packaging (mamba_ssm and fla import it; installed only when the interpreter lacks it). torch and triton are
# the device's own.
#
# mamba_ssm's package __init__ imports its model classes, which need the compiled CUDA extensions
# (selective_scan_cuda), huggingface_hub and transformers. The benchmark needs only the Triton SSD
# (mamba_ssm.ops.triton.ssd_combined), so the installed copy's __init__ is replaced by one that sets
# __version__ only, and the compiled extension modules are stubbed with modules that raise on any use.
set -euo pipefail
TARGET="${1:-/root/peers}"
WHL="${WHL:-.whl}"
PY="${PYTHON:-python}"

shopt -s nullglob
wheels=("$WHL"/mamba_ssm-*.whl "$WHL"/fla_core-*.whl "$WHL"/einops-*.whl)
if [ "${#wheels[@]}" -ne 3 ]; then
    echo "install_peers: expected one mamba_ssm, fla_core and einops wheel in $WHL, found: ${wheels[*]:-none}" >&2
    exit 1
fi
if ! "$PY" -c "import packaging.version" 2>/dev/null; then
    wheels+=("$WHL"/packaging-*.whl)
fi
mkdir -p "$TARGET"
"$PY" -m pip install --no-deps --no-index --upgrade --target "$TARGET" "${wheels[@]}" 2>&1 | grep -v "^WARNING: Running pip as" || true

init="$TARGET/mamba_ssm/__init__.py"
[ -f "$init.orig" ] || cp "$init" "$init.orig"
version=$(grep -m1 "^__version__" "$init.orig")
cat > "$init" <<EOF
# Replaced by mixerzoo's results/device-scripts/install_peers.sh: the original (kept as __init__.py.orig)
# imports the model classes, which need compiled CUDA extensions, huggingface_hub and transformers. Only the
# Triton ops (mamba_ssm.ops.triton.*) are used by the benchmark.
$version
EOF

for mod in selective_scan_cuda causal_conv1d_cuda; do
    cat > "$TARGET/$mod.py" <<EOF
"""Stub of mamba_ssm's compiled extension '$mod' (not built: MAMBA_SKIP_CUDA_BUILD=TRUE), written by
mixerzoo's results/device-scripts/install_peers.sh so that modules importing it load. Any use raises."""


def __getattr__(name):
    raise RuntimeError(f"'$mod.{name}' is a stub (install_peers.sh): mamba_ssm was installed without its "
                       "compiled CUDA extensions; only its Triton ops (mamba_ssm.ops.triton) are usable")
EOF
done

PYTHONPATH="$TARGET${PYTHONPATH:+:$PYTHONPATH}" "$PY" - <<'EOF'
import importlib.metadata as md
import mamba_ssm
from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined  # noqa: F401
from fla.ops.simple_gla import chunk_simple_gla  # noqa: F401
print(f"install_peers: mamba_ssm {mamba_ssm.__version__}, fla-core {md.version('fla-core')}, "
      f"einops {md.version('einops')} import")
EOF
echo "install_peers: use them with  PYTHONPATH=$TARGET:. python -m benchmarks.kernels --device cuda --out results/bench"
echo "               check them with PYTHONPATH=$TARGET:. python results/device-scripts/check_peers.py"
