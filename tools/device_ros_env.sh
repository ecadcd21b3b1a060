# Sourced by the device scripts that run nodes (tools/device_ros_check.sh,
# tools/device_hover_check.sh, tools/device_gpu_stereo.sh): "$1" is the log under $OUT that
# everything is copied to. Installs the ROS 2 Kilted wheels carried in .whl/ into /tmp/rosenv and
# exports what using them needs; defines stamp() and hover_side_by_side().
# Filling .whl/ here (the GPU image's Python is 3.12; no registry is reachable there), e.g.:
#   .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux_2_28_x86_64 --platform any -d .whl \
#     $(.venv/bin/python -m pip list --format=freeze | grep '^ros-') kornia==0.9.0 kornia_rs
# (about 51 MB: `run --carry .whl`, under its 64 MiB).
OUT=${OUT:-device_out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/$1") 2>&1
stamp() { echo "== $(date +%T) $*"; }
stamp "install the wheels"
python3 -m pip install -q --no-index --no-deps --no-compile --prefix /tmp/rosenv .whl/*.whl
SITE=$(find /tmp/rosenv -type d -name site-packages | head -1)
LIBS=$(find "$SITE" -maxdepth 1 -type d -name 'ros_*.libs' | tr '\n' ':')
export PYTHONPATH=$PWD:$SITE PYTHONUNBUFFERED=1 _ROS_WHEELS_BOOTSTRAP_COMPLETE=1
export LD_LIBRARY_PATH=/tmp/rosenv/lib:$LIBS${LD_LIBRARY_PATH:-}
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST

# `eval hover` for each of $INSTRUMENTS on CUDA, side by side (ROS domains 61, 62, ...): $FRAMES
# distances at $SWEEP_RATE sweeps/s, each ended after $HOVER_TIMEOUT s; results in
# $OUT/hover_<instrument>.json and one summary line each.
hover_side_by_side() {
  local i=0 k pids=()
  for k in $INSTRUMENTS; do
    i=$((i + 1))
    ROS_DOMAIN_ID=$((60 + i)) OMP_NUM_THREADS=3 timeout -k 10 "$HOVER_TIMEOUT" \
      python3 -m micro_perception.cli eval hover --instrument "$k" --frames "$FRAMES" \
      --sweep-rate "$SWEEP_RATE" --device cuda --json > "$OUT/hover_$k.json" 2> "/tmp/hover_$k.err" &
    pids+=($!)
  done
  # Their PIDs, not a bare `wait`: since bash 5.1 that also waits for the `tee` above, which
  # only ends with this shell, so the script hung after the results were written.
  wait "${pids[@]}"
  for k in $INSTRUMENTS; do
    tail -3 "/tmp/hover_$k.err"
    python3 - "$OUT/hover_$k.json" "$k" <<'PY'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception as e:  # noqa: BLE001
    print(sys.argv[2], "no result:", e)
    raise SystemExit
print(f"{sys.argv[2]:11s} frames {d['frames']} known {d['known']} rate {d['rate_hz']:.2f} Hz "
      f"true {d['true_distance_m']*1e3:.3f} mean {d['mean_distance_m']*1e3:.3f} mm "
      f"jitter {d['jitter_std_um']:.1f} um step {d['step_std_um']:.1f} um "
      f"latency p50 {d['latency_ms_p50']:.0f} ms device {d['device']}")
PY
  done
}
