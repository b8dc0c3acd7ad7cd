#!/usr/bin/env bash
# The reduced CL-with-DST study (docs/methods/cl-dst.md): three Hydra multiruns into one sweep
# directory, outputs/multiruns/cl_dst_reduced/, then one table from sparseforge-aggregate.
#   SPARSEFORGE_DATA_DIR=/path/with/MNIST/raw experiments/cl_dst_reduced/run.sh [extra overrides]
# Rerunning it finishes only what is missing (ckpt_path=auto skips completed points).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${SPARSEFORGE_PYTHON:-python}
CONF=experiments/cl_dst_reduced/configs
for study in finetune shared_mask cl_dst; do
    "$PY" train.py -m --config-dir "$CONF" "+study=$study" ckpt_path=auto "$@"
done
"$PY" -m sparseforge.sweeps.aggregate outputs/multiruns/cl_dst_reduced --metric test/acc \
    --column cl.bwt_task_il --column cl.avg_acc --column sparsity.density \
    --column sparsity.capacity_used --column sparsity.itop --digits 4
