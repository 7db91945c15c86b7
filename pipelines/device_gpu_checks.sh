#!/usr/bin/env bash
# The GPU checks of issue #17 in one call on a lent machine (the device tool), ~6 minutes:
#   1. the headline command (through-plane x6, 320 x 320 x 20, shipped PartDiff) at batch 8, 32
#      and 128, twice each (the second run without CUDA start-up);
#   2. torchrun -m mrisr.upsample over the shared axial volumes with NCCL (one process per GPU);
#   3. one minute of DDP training with NCCL (world size = GPUs), a resume, and the bit-exact check
#      of the trainer's test (resumed run == uninterrupted run);
#   4. pipelines/benchmark_sampling.py --device cuda.
# Everything goes to $OUT/gpu_checks.txt (and JSON reports next to it).
#
# Needs .devdata/ carried with the working tree (see pipelines/device_train_all.sh): site.tgz and
# nifti/ with the ProstateX-0218 axial T2 at least. The tracked tree holds 64 MB of shipped
# weights: carry as little NIfTI as the check needs.
# A dry run on a CPU: PY=.venv/bin/python DEVICE=cpu AXIAL=small.nii.gz OUT=/tmp/dry bash pipelines/device_gpu_checks.sh
set -u
PY=${PY:-python3}
OUT=${OUT:-/tmp/mrisr-out}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
if [ -f .devdata/site.tgz ]; then mkdir -p /tmp/site && tar xzf .devdata/site.tgz -C /tmp/site; fi
export PYTHONPATH=/tmp/site:$PWD
LOG="$OUT/gpu_checks.txt"
AXIAL=${AXIAL:-.devdata/nifti/ProstateX-0218_t2_tra_s5.nii.gz}
[ -f "$AXIAL" ] || AXIAL=../shared/data/prostatex/nifti/ProstateX-0218_t2_tra_s5.nii.gz
DATALIST=configs/prostatex.json
[ -f .devdata/prostatex.json ] && DATALIST=$PWD/.devdata/prostatex.json
GPUS=1
{
  date -u
  if [ "$DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    GPUS=$(nvidia-smi -L | wc -l)
  fi
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} > "$LOG" 2>&1
BATCHES="8 32 128"; [ "$DEVICE" = cpu ] && BATCHES="8"
for b in $BATCHES; do
  for i in 1 2; do
    start=$(date +%s%N)
    "$PY" -m mrisr.cli upsample "$AXIAL" --plane through --factor 6 --device "$DEVICE" --batch-size "$b" \
      -o /tmp/headline.nii.gz --overwrite --report "$OUT/headline_b$b.json" --quiet >> "$LOG" 2>&1
    echo "headline batch $b run $i: $(( ($(date +%s%N) - start) / 1000000 )) ms wall with process start;" \
      "work $("$PY" -c "import json; print(json.load(open('$OUT/headline_b$b.json'))['seconds'])") s" >> "$LOG"
  done
done
# 2. sharded inference with NCCL (gloo on a CPU dry run)
mkdir -p /tmp/cases && cp "$AXIAL" /tmp/cases/
start=$(date +%s%N)
"$PY" -m torch.distributed.run --nproc_per_node "$GPUS" -m mrisr.upsample /tmp/cases --plane through --factor 6 \
  --device "$DEVICE" -o /tmp/cases_sr --overwrite --report "$OUT/torchrun_upsample.json" --quiet >> "$LOG" 2>&1
echo "torchrun upsample, $GPUS processes: rc $? in $(( ($(date +%s%N) - start) / 1000000 )) ms" >> "$LOG"
# 3. DDP training with NCCL, resumed, compared with an uninterrupted run (bit-exact resume)
CFG="configs/tiny.yaml --set data.datalist=$DATALIST --set validation.every=1000"
for run in full part; do rm -rf /tmp/ddp_$run; done
"$PY" -m torch.distributed.run --nproc_per_node "$GPUS" -m mrisr.train $CFG -o /tmp/ddp_full --max-steps 6 \
  --device "$DEVICE" --quiet >> "$LOG" 2>&1
"$PY" -m torch.distributed.run --nproc_per_node "$GPUS" -m mrisr.train $CFG -o /tmp/ddp_part --max-steps 3 \
  --device "$DEVICE" --quiet >> "$LOG" 2>&1
"$PY" -m torch.distributed.run --nproc_per_node "$GPUS" -m mrisr.train $CFG -o /tmp/ddp_part --max-steps 6 \
  --resume --device "$DEVICE" --quiet >> "$LOG" 2>&1
"$PY" - >> "$LOG" 2>&1 <<'PY'
import torch
from safetensors.torch import load_file
a, b = load_file("/tmp/ddp_full/model.safetensors"), load_file("/tmp/ddp_part/model.safetensors")
same = all(torch.equal(a[k], b[k]) for k in a)
print("DDP resume bit-exact:", same)
PY
# 4. the sampler benchmark
[ "$DEVICE" = cuda ] && timeout 120 "$PY" pipelines/benchmark_sampling.py --device cuda >> "$LOG" 2>&1
date -u >> "$LOG"
