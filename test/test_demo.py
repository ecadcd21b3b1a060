"""The demo's pipeline at a small size: bag in, nodes over DDS, bag out, scored; the output bag
read back with an independent reader (mcap + mcap-ros2-support)."""

import json

import pytest

from micro_perception.ros.demo import NS, DemoConfig, run_demo, summary_table

mcap_reader = pytest.importorskip("mcap.reader")
mcap_ros2 = pytest.importorskip("mcap_ros2.decoder")


def test_demo_pipeline_records_scores_and_writes_a_playable_bag(tmp_path, sequence_cache):
    cfg = DemoConfig(
        out=str(tmp_path / "demo"),
        seconds=6,
        # The segmentation network learned the instrument at 512x512's scale; at 128x128 it
        # is a quarter that size and merges the optic disc into it.
        size=(256, 256),
        slices=3,
        poses=4,
        rate=1.0,
        device="cpu",
    )
    m = run_demo(cfg, say=lambda *a, **k: None)
    out = tmp_path / "demo"
    for name in ("montage.png", "distance.png", "metrics.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "metrics.json").read_text())["frames"] == m["frames"]
    assert m["frames"]["sweeps_in"] == 6 and m["frames"]["distances_out"] >= 3
    assert 0.8 < m["fusion"]["ssim"] <= 1.0 and m["depth"]["rmse_um"] > 0
    assert m["distance"]["known"] >= 3 and m["distance"]["mae_um"] < 1000
    assert m["latency_ms"]["p50"] > 0
    assert "distance MAE" in summary_table(m)

    # The recorded bag, read by the mcap library rather than by rosbags or rclpy.
    path = next((out / "output_bag").glob("*.mcap"))
    types, stamps = {}, {}
    with open(path, "rb") as f:
        reader = mcap_reader.make_reader(f, decoder_factories=[mcap_ros2.DecoderFactory()])
        for schema, channel, message, ros in reader.iter_decoded_messages():
            types[channel.topic] = schema.name
            if hasattr(ros, "header"):
                stamp = ros.header.stamp.sec * 10**9 + ros.header.stamp.nanosec
                assert stamp == message.log_time  # the bag's time is the message's stamp
                stamps.setdefault(channel.topic, []).append(stamp)
    assert types[f"{NS}/instrument/retina_distance"] == "sensor_msgs/msg/Range"
    assert types[f"{NS}/left/fused/image"] == "sensor_msgs/msg/Image"
    assert types[f"{NS}/instrument/proximity_alert"] == "std_msgs/msg/Bool"
    counts = m["output_bag"]["messages"]
    for topic, ts in stamps.items():
        assert len(ts) == counts[topic]
    assert len(stamps[f"{NS}/instrument/retina_distance"]) == m["distance"]["published"]
