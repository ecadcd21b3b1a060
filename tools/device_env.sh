# Sourced by the device scripts that need no ROS (tools/device_check.sh,
# tools/device_seg_train.sh): copies everything to $OUT/log.txt, defines MP and stamp(), and
# installs the packages the GPU image lacks (kornia), carried as wheels in .whl/ where present.
OUT=${OUT:-device_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
MP="python3 -m micro_perception.cli"
exec > >(tee -a "$OUT/log.txt") 2>&1
stamp() { echo "== $(date +%T) $*"; }

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
