#!/usr/bin/env bash
# What only a GPU machine can show, in one short run (about 9 minutes on one H100/H200):
#   1. the depth network trained on CUDA (bf16 autocast) from a freshly simulated set,
#   2. the inference runtime on CUDA: every network at 512x512 and 1080x1920 under eager fp32,
#      eager fp16, torch.compile and TensorRT (or its fallback where torch_tensorrt is absent),
#   3. the algorithm stages and OpenCV SGBM on the same frames.
# Results go to $OUT (default: device_out/): log.txt, train.json, bench.json, the fp16 depth
# weights in pieces under 16 MB (reassemble with `cat depth_fp16.pt.part-* > depth.pt`).
# Needs: python3 with torch (CUDA), torchvision, opencv, scipy, tqdm, tensorboard, pyyaml.
set -u
WORK=${WORK:-/tmp/mp_device}
TRAIN_BUDGET=${TRAIN_BUDGET:-200}
SAMPLES=${SAMPLES:-500}
# shellcheck source=tools/device_env.sh
. tools/device_env.sh
stamp "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, cv2, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'cv2', cv2.__version__, 'numpy', numpy.__version__, 'cpus', __import__('os').cpu_count())"
python3 -c "import torch_tensorrt" 2>&1 | tail -1

stamp "simulate $SAMPLES training stacks + 40 validation stacks (512x512, 2 slices)"
W=$(( $(nproc) > 2 ? $(nproc) - 1 : 1 ))
timeout 150 $MP simulate --out "$WORK/train" --samples "$SAMPLES" --slices 2 --workers "$W" \
  --split train --seed 11 --json | tail -3
timeout 60 $MP simulate --out "$WORK/val" --samples 40 --slices 2 --workers "$W" \
  --split val --seed 11 --json | tail -3

stamp "train depth (gt supervision, aif input, bf16, ${TRAIN_BUDGET} s budget)"
timeout $((TRAIN_BUDGET + 90)) $MP train depth --data "$WORK/train" --val "$WORK/val" \
  --out "$WORK/depth.pt" --epochs 80 --batch 16 --lr 1e-3 --size 256 --crops-per-frame 8 \
  --workers 8 --amp --time-budget "$TRAIN_BUDGET" --device cuda 2>"$WORK/train.err" \
  > "$OUT/train.json"
grep -v "it/s\]" "$WORK/train.err" | tail -40
tail -c 2000 "$OUT/train.json"

stamp "fp16 depth weights in pieces"
python3 - "$WORK/depth.pt" "$WORK/depth_fp16.pt" <<'EOF'
import sys, torch
from micro_perception.model_io import load_weights, save_weights
config, state, info = load_weights(sys.argv[1], "depth")
half = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
save_weights(sys.argv[2], "depth", config, half, info)
print("params", sum(v.numel() for v in state.values() if v.is_floating_point()))
EOF
ls -l "$WORK"/depth*.pt
split -b 15M -d "$WORK/depth_fp16.pt" "$OUT/depth_fp16.pt.part-"

stamp "bench: stages, SGBM peer, networks (eager fp32/fp16, tensorrt fp16) at 512 and 1080p"
timeout 200 $MP bench --json --seconds 1 --device cuda --depth-weights "$WORK/depth_fp16.pt" \
  --runtimes torch:fp32,torch:fp16,tensorrt:fp16 > "$OUT/bench.json" 2>"$WORK/bench.err"
tail -5 "$WORK/bench.err"
stamp "bench: torch.compile fp16, 512x512"
timeout 80 $MP bench --json --seconds 1 --device cuda --parts networks --size 512 512 --networks depth,fusion \
  --runtimes compile:fp16 --depth-weights "$WORK/depth_fp16.pt" \
  > "$OUT/bench_compile.json" 2>"$WORK/bench_compile.err"
tail -5 "$WORK/bench_compile.err"
stamp "done"
