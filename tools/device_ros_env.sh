# Sourced by the device scripts that run nodes (tools/device_ros_check.sh,
# tools/device_hover_check.sh): "$1" is the log under $OUT that everything is copied to. Installs
# the ROS 2 Kilted wheels carried in .whl/ into /tmp/rosenv and exports what using them needs;
# defines stamp().
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
