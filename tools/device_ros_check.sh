#!/usr/bin/env bash
# The nodes on a GPU machine over real DDS (about 3 minutes): the ROS 2 Kilted wheels for the
# machine's Python and kornia travel as wheels in .whl/ (no registry is reachable there).
#   1. the transport check at 1080p over mp_shm and over DDS,
#   2. bench end to end: sim -> focal_fusion_node -> depth_node processes with the networks on
#      CUDA (fp16), at 512x512 and 1920x1080, and the transport part.
# Results in $OUT (default device_out/): log_ros.txt, selftest_*.json, bench_e2e.json.
# SELFTEST=0 skips 1; PARTS and SIZES narrow 2 (e.g. PARTS=end_to_end SIZES="--size 1080 1920").
set -u
SELFTEST=${SELFTEST:-1}
PARTS=${PARTS:-end_to_end,transport}
SIZES=${SIZES:---size 512 512 --size 1080 1920}
. "$(dirname "$0")/device_ros_env.sh" log_ros.txt
export ROS_DOMAIN_ID=42
MP="python3 -m micro_perception.cli"
python3 -c "import rclpy, torch; print('rclpy ok; torch', torch.__version__, torch.cuda.get_device_name(0))"
stamp "transport check 1080p: mp_shm, then sensor_msgs/Image"
[ "$SELFTEST" = 1 ] && for t in shm raw; do
  timeout 90 $MP selftest --size 1080 1920 --frames 40 --transport $t --json > "$OUT/selftest_$t.json"
  python3 -c "import json; d=json.load(open('$OUT/selftest_$t.json')); print('$t', d['pairs'], \
d['exact'], d['latency_ms_p50'], d['latency_ms_p95'])"
done
stamp "bench end to end (CUDA fp16) at 512x512 and 1080x1920, and transport"
# shellcheck disable=SC2086
timeout 300 $MP bench --json --device cuda --runtimes torch:fp16 --parts "$PARTS" $SIZES \
  --e2e-seconds 15 --transport-frames 40 > "$OUT/bench_e2e.json"
python3 - "$OUT/bench_e2e.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for k, e in d["end_to_end"].items():
    print(k, "rate", round(e["rate_hz"], 2), "in", round(e["input_rate_hz"], 2), "dropped",
          e["dropped"], "latency", e["latency_ms"], "rss", e["rss_mb"])
t = d.get("transport")
for k in ("between_processes", "in_process", "shm_between_processes") if t else ():
    print(k, t[k])
if t:
    print("memcpy", t["memcpy_ms"])
PY
stamp "done"
