#!/usr/bin/env bash
# The main job: the whole cifar-edge pipeline on real CIFAR-10, step by step, timed.
#   bash scripts/pipeline.sh [DATA_ROOT] [OUT] [extra train flags...]
# DATA_ROOT holds cifar10-jpeg/ and cifar10-exact-subset/ (default ../shared/data).
set -euo pipefail
DATA=${1:-../shared/data}
OUT=${2:-runs/seed}
shift $(( $# > 2 ? 2 : $# ))
JPEG="$DATA/cifar10-jpeg"
EXACT="$DATA/cifar10-exact-subset/cifar-10-batches-py"

step() {
  local name=$1; shift
  echo "=== $name: $*"
  local start=$SECONDS
  "$@"
  echo "=== $name took $(( SECONDS - start ))s"
}

step train    cifar-edge train --data "$JPEG" --out "$OUT" "$@"
step export   cifar-edge export "$OUT/model.keras" --quantize
step evaluate cifar-edge evaluate "$OUT" --data "$JPEG"
step evaluate cifar-edge evaluate "$OUT" --data "$EXACT"
step infer    cifar-edge infer "$OUT/model.int8.onnx" "$JPEG/test" --format csv --output "$OUT/infer-test.csv"
step bench    cifar-edge bench "$OUT" --data "$JPEG" --images "$JPEG/test"
echo "done: reports in $OUT/"
