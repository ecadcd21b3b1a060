#!/usr/bin/env bash
# Issue 6's jitter target at the rate a GPU gives (about 4 minutes on one H100/H200): the ROS 2
# Kilted wheels for the machine's Python travel in .whl/ (as for tools/device_ros_check.sh).
#   1. `eval hover` for the five instruments on CUDA, run side by side (one ROS domain each),
#      at SWEEP_RATE sweeps/s: the published distance's mean and jitter at the achieved rate;
#   2. the depth stages at 512x512 on CUDA (the geometry as it is now);
#   3. bench end to end at 512x512 with the microscope at E2E_RATE sweeps/s: the chain's rate;
#   4. whether `eval hover` on CUDA exits by itself once it has printed its result (SIGABRT
#      after EXIT_WAIT s: faulthandler prints every thread's stack to exit_check.err).
# PARTS narrows a rerun (default hover,stages,e2e,exit).
# Results in $OUT (default device_out/): log_hover.txt, hover_*.json, stages.json, e2e.json.
set -u
FRAMES=${FRAMES:-300}
SWEEP_RATE=${SWEEP_RATE:-5}
E2E_RATE=${E2E_RATE:-10}
INSTRUMENTS=${INSTRUMENTS:-needle vitrector light_pipe forceps scissors}
PARTS=${PARTS:-hover,stages,e2e,exit}
EXIT_WAIT=${EXIT_WAIT:-75}
HOVER_TIMEOUT=${HOVER_TIMEOUT:-300}
. "$(dirname "$0")/device_ros_env.sh" log_hover.txt
MP="python3 -m micro_perception.cli"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import rclpy, torch; print('rclpy ok; torch', torch.__version__, torch.cuda.get_device_name(0))"

part() { [[ ",$PARTS," == *",$1,"* ]]; }
if part hover; then
stamp "eval hover x5 side by side: $FRAMES frames, $SWEEP_RATE sweeps/s, CUDA"
hover_side_by_side
fi

if part stages; then
stamp "depth stages at 512x512 (CUDA)"
ROS_DOMAIN_ID=70 timeout -k 10 90 $MP bench --json --seconds 2 --device cuda --parts stages \
  --size 512 512 > "$OUT/stages.json" 2> /tmp/stages.err
tail -3 /tmp/stages.err
python3 -c "import json; d=json.load(open('$OUT/stages.json')); \
[print(k, {s: round(v['p50'], 1) for s, v in st.items() if isinstance(v, dict) and 'p50' in v}) \
for k, st in d['stages'].items()]"
fi

if part e2e; then
stamp "bench end to end at 512x512, $E2E_RATE sweeps/s (CUDA fp16)"
ROS_DOMAIN_ID=71 timeout -k 10 100 $MP bench --json --device cuda --runtimes torch:fp16 \
  --parts end_to_end --size 512 512 --sweep-rate "$E2E_RATE" --e2e-seconds 20 \
  > "$OUT/e2e.json" 2> /tmp/e2e.err
tail -3 /tmp/e2e.err
python3 -c "import json; d=json.load(open('$OUT/e2e.json')); \
[print(k, 'rate', round(e['rate_hz'], 2), 'in', round(e['input_rate_hz'], 2), 'dropped', \
e['dropped'], 'latency', e['latency_ms']) for k, e in d['end_to_end'].items()]"
fi

if part exit; then
stamp "does eval hover on CUDA exit by itself? (20 frames, SIGABRT after $EXIT_WAIT s)"
PYTHONFAULTHANDLER=1 ROS_DOMAIN_ID=72 timeout -s ABRT -k 5 "$EXIT_WAIT" $MP eval hover \
  --instrument needle --frames 20 --sweep-rate 5 --device cuda --json \
  > "$OUT/exit_check.json" 2> "$OUT/exit_check.err"
echo "exit check rc $? (0: exited by itself; 134: hung and was aborted)"
grep -c '"frames"' "$OUT/exit_check.json"
fi
stamp "done"
