"""The model speed benchmark runs end to end with tiny settings and reports every number."""

from __future__ import annotations

import json
from pathlib import Path

from benchmark_scripts import load_benchmark


def test_model_speed_tiny_run(tmp_path: Path) -> None:
    bench = load_benchmark("model_speed")
    out_json, out_md = tmp_path / "speed.json", tmp_path / "speed.md"
    rc = bench.main(["--lengths", "16", "32", "--repeats", "1", "--batch", "2",
                     "--scaling-batch", "2", "--rois", "50", "--volumes", "60", "--threads", "1",
                     "--json", str(out_json), "--markdown", str(out_md)])
    assert rc == 0
    result = json.loads(out_json.read_text())

    latency = result["latency"]
    for key in ("predict_ms", "fisher_z_ms", "prepare_ms", "ratio"):
        assert latency[key] > 0, key
    assert latency["n_windows"] >= 1 and latency["n_rois"] == 50

    training = result["training"]
    assert training["batch"] == 2
    for key in ("finetune_ms", "pretrain_ms", "finetune_subjects_per_s",
                "pretrain_subjects_per_s"):
        assert training[key] > 0, key

    scaling = result["scaling"]
    assert [row["length"] for row in scaling["rows"]] == [16, 32]
    assert scaling["params"]["ssm"] > 0 and scaling["params"]["transformer"] > 0
    for row in scaling["rows"]:
        for kind in ("ssm", "transformer"):
            assert row[kind]["ms"] > 0, (kind, row["length"])
            assert row[kind]["peak_mb"] >= 0, (kind, row["length"])

    assert result["machine"]["torch"] and result["machine"]["threads"] == 1
    page = out_md.read_text()
    assert page.startswith("# model_speed") and "Command: `python benchmarks/model_speed.py" in page
