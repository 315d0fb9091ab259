# Sourced by the session's device scripts: strict variables, unbuffered Python, a `left N` helper (N minus the
# seconds since the script started: what remains of a call's budget), and the device and versions in
# $OUT/device.txt.
set -u
export PYTHONUNBUFFERED=1
T0=$(date +%s); left() { echo $(( $1 - ($(date +%s) - T0) )); }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/device.txt
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)" | tee -a $OUT/device.txt
