"""``micro-perception bench`` (the parts without ROS) prints the documented figures."""

import json

from micro_perception.bench import parse_runtimes, summary_ms
from micro_perception.cli import main
from micro_perception.inference import node_threads
from micro_perception.sim.scene import INSTRUMENT_KINDS


def test_summary_is_median_p95_and_max():
    s = summary_ms([1.0, 2.0, 3.0, 4.0, 100.0])
    assert (s["p50"], s["max"], s["runs"]) == (3.0, 100.0, 5)
    assert 4.0 < s["p95"] < 100.0


def test_runtime_list_parses_backends_and_precisions():
    cfgs = parse_runtimes("torch:fp32, compile:fp16,tensorrt", "cpu")
    assert [(c.backend, c.precision, c.torch_compile) for c in cfgs] == [
        ("torch", "fp32", False),
        ("torch", "fp16", True),
        ("tensorrt", "fp32", False),
    ]


def test_bench_json_has_stages_peers_and_networks(capsys):
    rc = main(
        [
            "bench",
            "--json",
            "--size",
            "64",
            "64",
            "--seconds",
            "0.01",
            "--slices",
            "3",
            "--device",
            "cpu",
            "--networks",
            "segmentation,fusion",
            "--runtimes",
            "torch:fp32,tensorrt:fp16",
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    stages = out["stages"]["64x64"]
    for stage in (
        "msg_to_array",
        "fusion",
        "depth_net",
        "segmentation",
        "stereo_teacher",
        "geometry",
        "pipeline",
        "pipeline_distance_only",
        "array_to_msg",
    ):
        assert stages[stage]["p50"] > 0 and stages[stage]["p95"] >= stages[stage]["p50"]
    # Timed on a frame with an instrument in it, which the geometry has to measure.
    scene = stages["_scene"]
    assert scene["instrument"] in INSTRUMENT_KINDS and 0 < scene["gap_normal_m"] < 0.01
    assert out["peers"]["sgbm"]["64x64"]["runs"] >= 5
    rows = {(r["network"], r["runtime"]) for r in out["networks"]}
    # tensorrt on a CPU machine runs (and says it runs) torch on the CPU.
    assert rows == {
        ("segmentation", "torch:fp32@cpu"),
        ("fusion", "torch:fp32@cpu"),
    }
    fallback = [r for r in out["networks"] if r.get("warnings")]
    assert fallback and all("needs CUDA" in w for r in fallback for w in r["warnings"])
    assert out["rss_mb"]["bench"] > 0


def _small_chain_bench(capsys, parts: str, *extra: str) -> dict:
    """``bench --json`` of the node chain at 96x96, 3 slices, a 4 s window, on the CPU."""
    chain = ("--size", "96", "96", "--slices", "3", "--e2e-seconds", "4", "--device", "cpu")
    rc = main(["bench", "--json", "--parts", parts, *chain, *extra])
    assert rc == 0
    return json.loads(capsys.readouterr().out)


def test_bench_through_dds_reports_end_to_end_and_transport(capsys):
    out = _small_chain_bench(capsys, "end_to_end,transport", "--transport-frames", "8")
    e2e = out["end_to_end"]["96x96"]
    assert e2e["distances_out"] > 0 and e2e["rate_hz"] > 0 and e2e["dropped"] >= 0
    lat = e2e["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["max"] < 10_000
    assert set(e2e["rss_mb"]) == {"sim_microscope_node", "focal_fusion_node", "depth_node"}
    assert all(mb > 50 for mb in e2e["rss_mb"].values())
    # Where the time goes, from the nodes' own /diagnostics in the same window.
    depth = e2e["nodes"]["depth_node"]
    assert depth["reports"] >= 2
    assert 0 < depth["geometry_ms"] < depth["pair_ms"] < 10_000
    assert 0 < depth["pair_age_ms"] < 10_000 and depth["superseded_in_window"] >= 0
    assert e2e["nodes"]["focal_fusion_node"]["fuse_ms"] > 0
    assert depth["transport"] == "shm" == e2e["nodes"]["focal_fusion_node"]["transport"]
    # Each node in its own process takes half the cores for torch: the two share the machine.
    assert (
        depth["segmentation_threads"]
        == node_threads()
        == e2e["nodes"]["focal_fusion_node"]["threads"]
    )
    t = out["transport"]
    assert t["between_processes"]["received"] == 8 == t["in_process"]["received"]
    # Two nodes of one process: every pair through the intra-process path, bit-exact.
    local = t["intra_process"]
    assert local["received"] == 8 == local["exact"] == local["via"]["local"]
    assert t["in_process"]["via"]["local"] == 0  # forced onto DDS for the comparison
    hand = t["intra_process_handover_ms"]
    for mode in ("", "_direct"):
        assert hand[f"image{mode}"]["runs"] == 8 == hand[f"pair{mode}"]["runs"]
        # A pair waits for its second image.
        assert 0 < hand[f"image{mode}"]["p50"] <= hand[f"pair{mode}"]["p50"]
    assert t["ms"]["p50"] > 0 and t["memcpy_ms"]["p50"] >= 0
    # The shared-memory path's own copies of a pair: more than one warm copy of one frame.
    assert t["shm_copies_ms"]["p50"] > t["memcpy_ms"]["p50"]


def test_bench_end_to_end_with_fusion_and_depth_in_one_process(capsys):
    e2e = _small_chain_bench(capsys, "end_to_end", "--one-process")["end_to_end"]["96x96"]
    assert e2e["processes"] == ["sim_microscope_node", "pipeline_process"]
    assert e2e["distances_out"] > 0 and e2e["known"] > 0
    assert set(e2e["rss_mb"]) == {"sim_microscope_node", "pipeline_process"}
    # Both nodes run and report from the one process; its torch pool is the process's own.
    nodes = e2e["nodes"]
    assert nodes["depth_node"]["pair_ms"] > 0 and nodes["focal_fusion_node"]["fuse_ms"] > 0
    # The fused images reach depth_node as arrays; the sim's slices, from another process,
    # through shared memory.
    assert nodes["depth_node"]["transport"] == "local"
    assert nodes["focal_fusion_node"]["transport"] == "shm"


def test_soak_short_form_reports_rss_and_latency_at_start_and_end(capsys):
    rc = main(
        [
            "soak",
            "--json",
            "--minutes",
            "0.25",
            "--size",
            "96",
            "96",
            "--slices",
            "3",
            "--device",
            "cpu",
            "--warmup",
            "2",
            "--window",
            "5",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc == (0 if out["ok"] else 1)
    assert set(out["rss_start_mb"]) == {"sim_microscope_node", "focal_fusion_node", "depth_node"}
    assert all(v > 50 for v in out["rss_end_mb"].values())
    # A quarter of a minute cannot show a slow leak, but a fast one shows.
    assert out["max_rss_growth_pct"] < 25
    assert out["latency_first_ms"]["p95"] > 0 and out["latency_last_ms"]["p95"] > 0
    assert out["distances_out"] > 0 and out["sweeps_in"] > 0
