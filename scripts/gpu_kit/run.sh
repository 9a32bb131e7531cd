#!/usr/bin/env bash
# The GPU check (docs/BENCHMARKS.md, section 9), for a machine with torch and CUDA but no package index:
#     bash scripts/gpu_kit/run.sh KIT OUT        KIT: what scripts/gpu_kit/pack.py wrote; OUT: where results go
# On the GPU, at nnU-Net's planned batch: seconds per iteration and step memory of nnU-Net's trainer and of each
# augmentation trainer, the SCNAS search step at the paper's widths, and one short real ASNG training through
# nnUNetv2_train's own entry point, ended by nnU-Net's validation; the cascade's input step. A few minutes on a GPU
# (an estimate: not run on one yet); the working tree is the code that runs (PYTHONPATH), the kit brings nnU-Net and
# what it needs.
# GPU_KIT_DEVICE=cpu GPU_KIT_ITERS=2 GPU_KIT_TRAIN_ITERS=2 run it on a CPU (checks the script, not the GPU).
set -euo pipefail
kit=$(realpath "$1")
out=$(realpath -m "$2")
device=${GPU_KIT_DEVICE:-cuda}
iters=${GPU_KIT_ITERS:-10}
train_iters=${GPU_KIT_TRAIN_ITERS:-50}
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
step() { echo "== $(date +%T) $*"; }

step "unpacking $kit into $work"
tar -xJf "$kit/site.tar.xz" -C "$work"
mkdir -p "$work/raw" "$work/results"
cp -r "$kit/data" "$work/preprocessed"
dataset=$(basename "$(ls -d "$work"/preprocessed/Dataset*)")
id=$((10#${dataset:7:3}))
# PYTHONPATH comes before the image's own packages, so the kit holds only what the image lacks; .pth files are not
# read from PYTHONPATH (no start-up hook), so nnUNet_extTrainer points nnU-Net at this tree's trainers directly
export PYTHONPATH="$repo:$work/site" nnUNet_extTrainer="$repo/nnunet_autoaug/trainers" nnUNet_compile=f \
    nnUNet_raw="$work/raw" nnUNet_preprocessed="$work/preprocessed" nnUNet_results="$work/results"

step "machine"
if [ "$device" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
fi
python3 -c "import torch, nnunetv2, nnunet_autoaug.trainers; from importlib.metadata import version
print('torch', torch.__version__, 'nnunetv2', version('nnunetv2'), 'GPU', torch.cuda.is_available())
assert '$device' != 'cuda' or torch.cuda.is_available(), 'torch sees no GPU'" || {
    echo "the kit does not run here. A missing module that scripts/gpu_kit/preinstalled.txt lists is not on" \
         "this machine: delete it from that list and pack again; for any other, pack again"; exit 1; }

step "seconds per iteration and step memory, trainers taking turns ($iters iterations each)"
python3 scripts/bench_overhead.py --device "$device" --dataset "$id" --iters "$iters" --warmup 3 --json \
    "$out/overhead_$device.json" --trainers nnUNetTrainer nnUNetTrainerDA5 nnUNetTrainerRandAug nnUNetTrainerPolicy \
    nnUNetTrainerASNG nnUNetTrainerASNGShared nnUNetTrainerASNGFast nnUNetTrainerMetaAug nnUNetTrainerMetaAugFirstOrder

step "a short real ASNG training (2 epochs x $train_iters iterations) with nnU-Net's validation"
nnUNet_autoaug_epochs=2 nnUNet_autoaug_iters=$train_iters nnUNet_autoaug_val_iters=5 \
    python3 -m nnunetv2.run.run_training "$id" 3d_fullres 0 -tr nnUNetTrainerASNG -device "$device"
fold="$work/results/$dataset/nnUNetTrainerASNG__nnUNetPlans__3d_fullres/fold_0"
cp "$(ls "$fold"/training_log_*.txt | head -1)" "$out/asng_training_log.txt"
cp "$fold/validation/summary.json" "$out/asng_validation_summary.json"
cp "$fold/progress.png" "$out/asng_progress.png"
python3 -c "import json; m = json.load(open('$out/asng_validation_summary.json'))['mean']
print('validation Dice per label:', {k: round(v['Dice'], 4) for k, v in m.items()})"

step "cascade inputs per batch (128^3, batch 2, 3 labels): ours on the GPU against nnU-Net's worker CPU time"
python3 scripts/bench_cascade.py --device "$device" --batches 20 || echo "bench_cascade.py failed: see above"

step "SCNAS: search step at widths 48 / 68 against nnU-Net's step, same patch and batch"
python3 scripts/bench_scnas.py --plans "$work/preprocessed/$dataset/nnUNetPlans.json" --device "$device" \
    --iterations 3 --json "$out/scnas_$device.json" || echo "bench_scnas.py failed (out of memory?): see above"

step "done: $(ls "$out" | tr '\n' ' ')"
