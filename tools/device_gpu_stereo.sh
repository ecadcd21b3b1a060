#!/usr/bin/env bash
# Issue 7's GPU stereo teacher on a CUDA machine (about 6 minutes on one H100/H200); the ROS 2
# Kilted wheels for the machine's Python travel in .whl/ (as for tools/device_ros_check.sh).
#   1. check: the Triton path kernel against the tensor loop on CUDA (bit for bit), the whole
#      torch stereo on CUDA against the same code on the CPU, and its parts timed at 512x512
#      and 1080p;
#   2. the depth stages at 512x512 and 1920x1080 on CUDA (stereo teacher: OpenCV on the CPU and
#      torch on CUDA, the pipeline with the GPU one);
#   3. bench end to end at 512x512 with the microscope at E2E_RATE sweeps/s, and at 1080p at
#      E2E_RATE_HD, the depth node's stereo backend auto (torch on CUDA);
#   4. eval hover for the five instruments side by side at SWEEP_RATE sweeps/s;
#   5. one: the same end-to-end runs with fusion and depth in one process (pipeline_process,
#      the fused images as arrays), and the 1080p transport: DDS, mp_shm, intra-process, memcpy.
# PARTS narrows a rerun (default check,stages,e2e,hover,one).
# Results in $OUT (default device_out/): log_gpu_stereo.txt, check.txt, stages_*.json, e2e_*.json,
# hover_*.json, e2e_one_*.json, transport_1080.json.
set -u
E2E_RATE=${E2E_RATE:-10}
E2E_RATE_HD=${E2E_RATE_HD:-5}
SWEEP_RATE=${SWEEP_RATE:-10}
FRAMES=${FRAMES:-300}
HOVER_TIMEOUT=${HOVER_TIMEOUT:-150}
INSTRUMENTS=${INSTRUMENTS:-needle vitrector light_pipe forceps scissors}
PARTS=${PARTS:-check,stages,e2e,hover,one}
. "$(dirname "$0")/device_ros_env.sh" log_gpu_stereo.txt
MP="python3 -m micro_perception.cli"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, \
torch.cuda.get_device_name(0))"
part() { [[ ",$PARTS," == *",$1,"* ]]; }

if part check; then
stamp "GPU stereo: kernel and whole matcher against the CPU, parts timed"
timeout -k 10 240 python3 tools/gpu_stereo_check.py 2>&1 | tee "$OUT/check.txt"
fi

if part stages; then
for size in "512 512" "1080 1920"; do
  tag=${size// /x}
  stamp "depth stages at $tag (CUDA)"
  ROS_DOMAIN_ID=70 timeout -k 10 150 $MP bench --json --seconds 2 --device cuda --parts stages \
    --size $size > "$OUT/stages_$tag.json" 2> "/tmp/stages_$tag.err"
  tail -3 "/tmp/stages_$tag.err"
  python3 -c "import json; d=json.load(open('$OUT/stages_$tag.json')); \
[print(k, {s: round(v['p50'], 1) for s, v in st.items() if isinstance(v, dict) and 'p50' in v}) \
for k, st in d['stages'].items()]"
done
fi

e2e_runs() {  # $1: the file tag, then bench's extra arguments
  local name=$1; shift
  for run in "512 512 $E2E_RATE" "1080 1920 $E2E_RATE_HD"; do
    set -- $run "$@"
    tag=${1}x${2}
    stamp "bench end to end at $tag, $3 sweeps/s (CUDA fp16, stereo backend auto) ${*:4}"
    ROS_DOMAIN_ID=71 timeout -k 10 110 $MP bench --json --device cuda --runtimes torch:fp16 \
      --parts end_to_end --size "$1" "$2" --sweep-rate "$3" --e2e-seconds 20 "${@:4}" \
      > "$OUT/${name}_$tag.json" 2> "/tmp/${name}_$tag.err"
    tail -3 "/tmp/${name}_$tag.err"
    python3 -c "import json; d=json.load(open('$OUT/${name}_$tag.json')); \
[print(k, 'rate', round(e['rate_hz'], 2), 'in', round(e['input_rate_hz'], 2), 'dropped', \
e['dropped'], 'latency', e['latency_ms'], 'nodes', e['nodes']) for k, e in d['end_to_end'].items()]"
    shift 3
  done
}

if part e2e; then
e2e_runs e2e
fi

if part hover; then
stamp "eval hover x5 side by side: $FRAMES frames, $SWEEP_RATE sweeps/s, CUDA, GPU stereo"
hover_side_by_side
fi
if part one; then
e2e_runs e2e_one --one-process
stamp "transport at 1080p: DDS and mp_shm between processes, DDS and intra-process in one"
ROS_DOMAIN_ID=72 timeout -k 10 120 $MP bench --json --device cuda --parts transport \
  --size 1080 1920 > "$OUT/transport_1080.json" 2> /tmp/transport.err
tail -3 /tmp/transport.err
python3 -c "import json; t=json.load(open('$OUT/transport_1080.json'))['transport']; \
[print(k, t[k]['received'], t[k]['latency_ms']) for k in ('between_processes', 'in_process', \
'shm_between_processes', 'intra_process')]; print('memcpy', t['memcpy_ms'])"
fi
stamp "done"
