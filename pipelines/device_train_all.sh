#!/usr/bin/env bash
# One call on a lent GPU machine (the device tool): train every default model side by side for
# MINUTES (default 5), export them into $OUT, benchmark them on every plane of the held-out
# patient, time the headline command, and pack the logs into $OUT/logs.tar.gz.
#
# Needs .devdata/ carried with the working tree (git-ignored, 64 MiB travel in all with the
# repository): site.tgz (monai and nibabel unpacked without their tests: the GPU image lacks
# them), nifti/ (the shared NIfTI series but the repeat 0001 tra s10, for size) and
# prostatex.json (configs/prostatex.json with paths into nifti/). See docs/training.md.
set -u
MINUTES=${1:-5}
OUT=${OUT:-/tmp/mrisr-out}
mkdir -p "$OUT"
mkdir -p /tmp/site && tar xzf .devdata/site.tgz -C /tmp/site || exit 1
export PYTHONPATH=/tmp/site:$PWD
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  date -u
} > "$OUT/train_all.txt" 2>&1
python3 pipelines/train_default_models.py --out /tmp/gpu --minutes "$MINUTES" --device cuda \
  --datalist .devdata/prostatex.json --batch-size 32 --crop 128 --workers 2 \
  --export-dir "$OUT" --archive "$OUT/logs.tar.gz" ${WIDEN:+--widen "$WIDEN"} >> "$OUT/train_all.txt" 2>&1
# the headline command on the 320 x 320 x 20 axial volume, default settings, shipped model
# (a second run, so the first's CUDA start-up is not counted)
for i in 1 2; do
  start=$(date +%s%N)
  python3 -m mrisr.cli upsample .devdata/nifti/ProstateX-0218_t2_tra_s5.nii.gz --plane through --factor 6 \
    --device cuda -o /tmp/headline.nii.gz --overwrite --report "$OUT/headline.json" --quiet >> "$OUT/train_all.txt" 2>&1
  echo "headline run $i: $(( ($(date +%s%N) - start) / 1000000 )) ms wall, process start included" >> "$OUT/train_all.txt"
done
