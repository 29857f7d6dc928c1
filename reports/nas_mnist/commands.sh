#!/usr/bin/env bash
# Reduced NAS on MNIST (CPU, 1 thread): the exact commands behind reports/nas_mnist/. Run from the repository root.
# Budgets: space "tiny" (24 ConvNets); proxies random10 and dm10 (DM: 100 iterations, 64 real images per class);
# proxy training 50 epochs (1 batch of 100 images each = 50 SGD steps, DSA), 1 repeat, validation and test accuracy
# of every trial; ground truth on the whole training split (54,000 images) for 216 SGD steps of batch 250 = one
# full epoch, DSA, 1 repeat, for the union of both proxies' top 25% (k = 6 each).
set -euo pipefail
export OMP_NUM_THREADS=1
RUN=${RUN:-runs/nas_mnist}
DATA=${DATA_ROOT:-../shared/data}
COMMON="--dataset mnist --data-root $DATA --space tiny --repeats 1 --epochs 50 --device cpu --out $RUN --no-progress"
/usr/bin/time -f "random10 search: %e s wall" python -m nas.search --proxy random10 $COMMON
/usr/bin/time -f "dm10 search (incl. condensation): %e s wall" python -m nas.search --proxy dm10 --iterations 100 --batch-real 64 $COMMON
/usr/bin/time -f "ground truth: %e s wall" python -m nas.groundtruth --out $RUN --top-fraction 0.25 --train-iterations 216 --repeats 1 --device cpu --data-root $DATA --no-progress
mkdir -p reports/nas_mnist/run
cp $RUN/results.csv $RUN/groundtruth.csv $RUN/run.json reports/nas_mnist/run/
python -m reports nas reports/nas_mnist/run --out reports/nas_mnist --top-fraction 0.25
