"""The top-N speed benchmark (benchmarks/topn_speed.py) runs end to end at a tiny size and agrees with NumPy."""

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "topn_speed.py"


def test_topn_speed_tiny(tmp_path):
    spec = importlib.util.spec_from_file_location("topn_speed", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "topn_speed.json"
    argv = ["--sizes", "1000", "--users", "4", "--k", "10", "--embed", "4", "--chunks", "256", "--rounds", "1"]
    record = bench.main([*argv, "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    (result,) = record["results"]
    (entry,) = result["jaxrec"]
    assert entry["effective_chunk"] == 256 and entry["n_chunks"] == 4
    assert result["numpy"]["overlap_with_jaxrec_mean"] >= 0.99
    assert entry["scoring_only"]["overlap_with_full"] >= 0.99
    assert result["floor"]["median_ms"] > 0 and result["floor_streamed"]["median_ms"] > 0
    assert record["table"][0]["users_per_s"] > 0
    assert record["machine"]["cores"] >= 1
