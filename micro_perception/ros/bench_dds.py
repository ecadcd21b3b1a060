"""The parts of ``micro-perception bench`` that go through real DDS between processes.

* ``end_to_end``: the virtual microscope, ``focal_fusion_node`` and ``depth_node`` as three
  processes (as ``ros2 launch`` starts them), or with ``one_process`` fusion and depth in one
  (``pipeline_process``, ``one_process:=true``), and a subscriber here to
  ``instrument/retina_distance``: latency from the stamp of a sweep's last slice (which the
  distance carries) to the distance's arrival, the achieved output rate, the sweeps that gave no
  distance, and each process's peak RSS.
* ``transport``: one image pair node-to-node at the given size (the transport check): between
  processes over DDS and over ``mp_shm``, between two nodes of one process over DDS and over the
  intra-process path, and a plain memcpy of the same frame in this process: the physical floor
  of this path.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import JointState, Range

from micro_perception.bench import summary_ms, timed
from micro_perception.ros.chain import FUSED
from micro_perception.ros.processes import start_node, stop_process
from micro_perception.ros.qos import image_qos


def proc_mb(pid: int, field: str = "VmRSS") -> float | None:
    """A process's memory figure from /proc/PID/status, MB (VmRSS now, VmHWM its peak); None
    once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def run_end_to_end(
    size: tuple[int, int],
    seconds: float = 20.0,
    slices: int = 8,
    sweep_rate: float = 2.0,
    runtime: dict | None = None,
    startup_timeout: float = 240.0,
    warmup_s: float = 3.0,
    namespace: str = "/bench",
    cache_dir: str = "",
    soak_window_s: float = 0.0,
    one_process: bool = False,
) -> dict:
    """Run the node processes; measure for ``seconds``, ``warmup_s`` after the first distance
    arrives."""
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    h, w = size
    sim = {
        "width": w,
        "height": h,
        "slices": slices,
        "poses": 2,
        "sweep_rate": float(sweep_rate),
        "period": 3600.0,
    }
    if cache_dir:
        sim["cache_dir"] = cache_dir
    fusion = {"slices_per_stack": slices, "publish_focus_depth": False, **(runtime or {})}
    depth = dict(runtime or {})
    procs = {"sim_microscope_node": start_node("sim_microscope_node", namespace, sim)}
    if one_process:  # each node takes the parameters it declares
        procs["pipeline_process"] = start_node("pipeline_process", namespace, fusion | depth)
    else:
        procs["focal_fusion_node"] = start_node("focal_fusion_node", namespace, fusion)
        procs["depth_node"] = start_node("depth_node", namespace, depth, remaps=FUSED[1:])
    context = rclpy.Context()
    rclpy.init(context=context)
    node = Node("bench_listener", context=context, namespace=namespace)
    lock = threading.Lock()
    ranges: list[tuple[float, float, float]] = []  # (arrival, stamp, range)
    focus: list[float] = []  # arrival of each slice's focus position (one for both eyes)

    def on_range(msg: Range) -> None:
        now = time.time()
        with lock:
            stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            ranges.append((now, stamp, msg.range))

    def on_focus(msg: JointState) -> None:
        with lock:
            focus.append(time.time())

    diagnostics: list[tuple[float, str, dict]] = []  # (arrival, node, values), once a second

    def on_diagnostics(msg: DiagnosticArray) -> None:
        now = time.time()
        with lock:
            for st in msg.status:
                diagnostics.append((now, st.hardware_id, {kv.key: kv.value for kv in st.values}))

    node.create_subscription(Range, "instrument/retina_distance", on_range, 50)
    node.create_subscription(JointState, "focus", on_focus, image_qos("reliable", 100))
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 50)
    ex = SingleThreadedExecutor(context=context)
    ex.add_node(node)
    thread = threading.Thread(target=ex.spin, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not ranges:
            dead = [n for n, p in procs.items() if p.poll() not in (None, 0)]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited during start")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no distance within {startup_timeout:.0f} s of the start")
            time.sleep(0.1)
        time.sleep(warmup_s)  # frames queued during the start drain first
        t_start = time.time()
        rss_start = {name: proc_mb(p.pid) for name, p in procs.items()}
        while time.time() < t_start + seconds:
            dead = [n for n, p in procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited during the run")
            time.sleep(min(1.0, t_start + seconds - time.time() + 0.01))
        t_end = time.time()
        rss = {name: proc_mb(p.pid, "VmHWM") for name, p in procs.items()}
        rss_end = {name: proc_mb(p.pid) for name, p in procs.items()}
    finally:
        for p in procs.values():
            stop_process(p)
        ex.shutdown()
        thread.join(timeout=5)
        node.destroy_node()
        rclpy.shutdown(context=context)
    with lock:
        window = [r for r in ranges if t_start <= r[0] < t_end]
        sweeps = sum(1 for t in focus if t_start <= t < t_end) / slices  # one focus per slice
        reports = [(node, values) for t, node, values in diagnostics if t_start <= t < t_end]
    lat = [(arr - stamp) * 1e3 for arr, stamp, _ in window]
    span = t_end - t_start
    return {
        "size": [h, w],
        "seconds": span,
        "sweeps_in": sweeps,
        "distances_out": len(window),
        "rate_hz": len(window) / span,
        "input_rate_hz": sweeps / span,
        "dropped": max(0, round(sweeps - len(window))),
        "latency_ms": summary_ms(lat) if lat else None,
        "known": int(sum(np.isfinite(r[2]) for r in window)),
        "rss_mb": rss,
        "nodes": _node_figures(reports, ["sim_microscope_node", *_SUPERSEDED]),
        "processes": list(procs),
        "runtime": runtime or {},
        **(
            _soak(window, t_start, t_end, soak_window_s, rss_start, rss_end)
            if soak_window_s
            else {}
        ),
    }


# The counters of inputs a node's newest-first worker dropped for a newer one.
_SUPERSEDED = {"depth_node": "superseded", "focal_fusion_node": "superseded_stacks"}


def _node_figures(reports: list[tuple[str, dict]], names: list[str]) -> dict:
    """Per node, from its /diagnostics of the measured window (once a second, each the last
    frame's): the median of every time figure (``*_ms``: the depth node's stages, its whole
    work on a pair and the pair's age when that starts, the fusion node's stack), the torch
    threads its networks run on, the transport its images came by, and how many inputs the
    newest-first workers dropped in the window."""
    out: dict[str, dict] = {}
    for name in names:
        values = [v for node, v in reports if node == name]
        if not values:
            continue
        fig: dict = {"reports": len(values)}
        for key in sorted({k for v in values for k in v if k.endswith("_ms")}):
            # "-": the stage did not run on that frame.
            nums = [float(v[key]) for v in values if v.get(key, "-") != "-"]
            if nums:
                fig[key] = float(np.median(nums))
        if "transport" in values[-1]:  # how its images arrived: local, shm or raw
            fig["transport"] = values[-1]["transport"]
        for key in sorted({k for v in values for k in v if k.endswith("threads")}):
            fig[key] = int(values[-1][key]) if values[-1].get(key, "").isdigit() else None
        key = _SUPERSEDED.get(name)
        if key:  # a counter appears with its first count
            fig["superseded_in_window"] = int(values[-1].get(key, 0)) - int(values[0].get(key, 0))
        out[name] = fig
    return out


def _soak(window, t_start, t_end, span, rss_start, rss_end) -> dict:
    """RSS at the start and end of the run and latency in its first and last ``span`` seconds."""

    def lat(lo, hi):
        ms = [(a - s) * 1e3 for a, s, _ in window if lo <= a < hi]
        return summary_ms(ms) if ms else None

    growth = {
        name: (rss_end[name] - rss_start[name]) / rss_start[name] * 100
        for name in rss_start
        if rss_start[name] and rss_end.get(name)
    }
    return {
        "soak": {
            "rss_start_mb": rss_start,
            "rss_end_mb": rss_end,
            "rss_growth_pct": growth,
            "latency_first_ms": lat(t_start, t_start + span),
            "latency_last_ms": lat(t_end - span, t_end),
            "window_s": span,
        }
    }


def run_transport(size: tuple[int, int] = (1080, 1920), frames: int = 40, rate: float = 10.0):
    """Stereo pairs node-to-node between processes and within one, and the memcpy floor."""
    from micro_perception.ros.transport_check import TransportCheckConfig, run_transport_check

    h, w = size
    out = {"size": [h, w], "encoding": "rgb8", "frames": frames, "rate_hz": rate}
    runs = (
        ("between_processes", True, "raw"),
        ("in_process", False, "raw"),
        ("shm_between_processes", True, "shm"),
        ("intra_process", False, "auto"),  # auto takes the in-process publisher's arrays
    )
    for key, separate, transport in runs:
        cfg = TransportCheckConfig(
            width=w,
            height=h,
            frames=frames,
            rate=rate,
            separate_process=separate,
            namespace=f"/bench_{key}",
            transport=transport,
        )
        report = run_transport_check(cfg)
        p50, p95, mx = (report.get(f"latency_ms_{k}") for k in ("p50", "p95", "max"))
        out[key] = {
            "received": report["pairs"],
            "exact": report["exact"],
            "via": report["transport"]["left"],
            "latency_ms": {"p50": p50, "p95": p95, "max": mx} if p50 is not None else None,
        }
    src = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    dst = np.empty_like(src)
    out["memcpy_ms"] = timed(lambda: np.copyto(dst, src), seconds=0.5, min_runs=20)
    out["intra_process_handover_ms"] = _intra_process_handover(src, frames, rate)
    out["shm_copies_ms"] = _shm_pair_copies(src)
    out["ms"] = out["between_processes"]["latency_ms"]
    out["shm_ms"] = out["shm_between_processes"]["latency_ms"]
    out["intra_process_ms"] = out["intra_process"]["latency_ms"]
    return out


def _intra_process_handover(image: np.ndarray, frames: int, rate: float) -> dict:
    """The intra-process path alone: from ``publish()`` of an image to its callback in another
    node of this process (``image``), and of a stereo pair to the synchronised pair
    (``pair``), the subscriber spinning on its own executor and thread as in
    pipeline_process; and the same handed over on the publisher's thread (``*_direct``), as
    depth_node takes its images with the newest-pair worker. The clock starts at the publish
    call, so the publisher's own work (building the image, its camera_info) is not in it."""
    out = {}
    for direct, suffix in ((False, ""), (True, "_direct")):
        got = _handover_run(image, frames, rate, direct)
        out |= {f"{key}{suffix}": summary_ms(v) if v else None for key, v in got.items()}
    return out


def _handover_run(image: np.ndarray, frames: int, rate: float, direct: bool) -> dict:
    from std_msgs.msg import Header

    from micro_perception.ros.shm_transport import ImageInput, ImagePublisher
    from micro_perception.ros.sync import ApproximateTimeSynchronizer

    context = rclpy.Context()
    rclpy.init(context=context)
    talker = Node("handover_talker", context=context, namespace="/bench_handover")
    listener = Node("handover_listener", context=context, namespace="/bench_handover")
    qos = image_qos("best_effort", 5)
    pubs = [ImagePublisher(talker, f"{eye}/image", qos) for eye in ("left", "right")]
    inputs = [
        ImageInput(listener, f"{eye}/image", qos, direct=direct) for eye in ("left", "right")
    ]
    sync = ApproximateTimeSynchronizer(inputs, 10, 0.005)
    t0, got = [0.0], {"image": [], "pair": []}
    arrived = threading.Event()

    def on(key):
        def cb(*_):
            got[key].append((time.perf_counter() - t0[0]) * 1e3)
            if key == "pair":
                arrived.set()

        return cb

    inputs[0].registerCallback(on("image"))
    sync.registerCallback(on("pair"))
    ex = SingleThreadedExecutor(context=context)
    ex.add_node(listener)
    thread = threading.Thread(target=ex.spin, daemon=True)
    thread.start()
    right = np.ascontiguousarray(image[:, ::-1])
    try:
        for i in range(frames):
            arrived.clear()
            header = Header(frame_id="bench")
            header.stamp.sec = i + 1
            t0[0] = time.perf_counter()
            pubs[0].publish(image, "rgb8", header)
            pubs[1].publish(right, "rgb8", header)
            arrived.wait(1.0)
            time.sleep(1.0 / rate)
    finally:
        ex.shutdown()
        thread.join(timeout=5)
        for obj in (*pubs, *inputs):
            obj.close()
        for node in (talker, listener):
            node.destroy_node()
        rclpy.shutdown(context=context)
    return got


def _shm_pair_copies(image: np.ndarray, seconds: float = 0.5) -> dict:
    """What the ``mp_shm`` path copies for one stereo pair, without ROS: both images written
    into the ring and read back out of it, as publisher and subscriber do. Unlike the memcpy
    floor (one frame copied again and again, warm in the cache) every slot is cold here."""
    from micro_perception.ros.shm_transport import ShmRing

    ring = ShmRing(image.nbytes)
    reader = ShmRing.attach(ring.name)
    try:

        def pair():
            for _ in range(2):
                slot, seq = ring.write(image)
                if reader.read(slot, seq) is None:
                    raise RuntimeError("shm slot overwritten while read")

        for _ in range(ring.slots):  # the first pass over the slots touches their pages
            pair()
        return timed(pair, seconds=seconds, min_runs=10)
    finally:
        reader.close()
        ring.close()
