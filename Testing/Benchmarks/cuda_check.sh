#!/usr/bin/env bash
# The CUDA paths, on a machine with an NVIDIA GPU (CI has none): training with automatic precision
# (bf16) and with fp16 + GradScaler, torchrun (NCCL process group), prediction on cuda against cpu
# (same geometry; Dice between the two masks), and the demo on cuda with its time.
#     bash Testing/Benchmarks/cuda_check.sh [WORK_DIR]      (default /tmp/universalseg-cuda)
# Results: Testing/Benchmarks/results/cuda/cuda_check.log (an NVIDIA H100, version 0.4.0, 2026-11-24).
W=${1:-/tmp/universalseg-cuda}
U="python3 -m UniversalSeg"
TRAIN="--catalog $W/d/catalog.yaml --config small --patch 32 32 32 --spacing 3.75 3.75 3.75 --device cuda --no-progress"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, monai, SimpleITK; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'monai', monai.__version__)"
$U synth "$W/d" --cases 5 --shape 48 --seed 3 >/dev/null 2>&1
SECONDS=0
$U train $TRAIN --out "$W/r-bf16" --epochs 2 --iterations 50 2>&1 | tail -4
echo "train 100 steps on cuda (auto precision): $SECONDS s"
$U train $TRAIN --out "$W/r-fp16" --epochs 1 --iterations 20 --precision fp16 2>&1 | tail -2
echo "fp16 exit: ${PIPESTATUS[0]}"
torchrun --standalone --nproc_per_node=1 -m UniversalSeg train $TRAIN --out "$W/r-ddp" --epochs 1 --iterations 20 2>&1 | tail -3
echo "torchrun exit: ${PIPESTATUS[0]}"; ls "$W/r-ddp/model"
IMG=$(ls "$W"/d/ct-hospital-a/imagesTr/*.nii.gz | head -1)
for dev in cuda cpu; do
  $U predict --model "$W/r-bf16/model" --input "$IMG" --modality CT --output "$W/p-$dev.nii.gz" --device $dev --progress none
  echo "predict $dev exit $?"
done
python3 - "$W/p-cuda.nii.gz" "$W/p-cpu.nii.gz" <<'PY'
import sys
import numpy as np
import SimpleITK as sitk
a, b = (sitk.ReadImage(p) for p in sys.argv[1:3])
same = (a.GetSize() == b.GetSize() and np.allclose(a.GetOrigin(), b.GetOrigin())
        and np.allclose(a.GetSpacing(), b.GetSpacing()) and np.allclose(a.GetDirection(), b.GetDirection()))
x, y = sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b)
print("geometry identical:", same, "labels", np.unique(x), np.unique(y))
for v in np.union1d(np.unique(x), np.unique(y))[1:]:
    p, q = x == v, y == v
    print(f"label {v}: cuda {p.sum()} cpu {q.sum()} voxels, Dice cuda vs cpu {2 * (p & q).sum() / max(1, p.sum() + q.sum()):.4f}")
PY
SECONDS=0
timeout 600 $U demo --out "$W/demo" --device cuda --no-progress 2>&1 | tail -14
echo "demo on cuda: $SECONDS s"
