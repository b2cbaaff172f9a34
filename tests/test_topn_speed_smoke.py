"""The top-N speed benchmark (benchmarks/topn_speed.py) runs end to end at a tiny size and agrees with NumPy."""

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "topn_speed.py"


TINY = ["--sizes", "1000", "--users", "4", "--k", "10", "--embed", "4", "--chunks", "256", "--rounds", "1"]


def load_bench():
    spec = importlib.util.spec_from_file_location("topn_speed", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_topn_speed_tiny(tmp_path):
    bench = load_bench()
    out = tmp_path / "topn_speed.json"
    argv = TINY
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


def test_topn_speed_of_the_exact_als_fold_in_adapts_in_numpy_as_jaxrec_does(tmp_path):
    """``--loss als_exact``: NumPy's batched closed-form fold-in gives jaxrec's Newton-step user vectors, and the same
    lists."""
    record = load_bench().main([*TINY, "--embed", "8", "--loss", "als_exact", "--confidence", "3", "--out", "-"])
    (result,) = record["results"]
    assert "exact ALS" in record["workload"]["loss"]
    assert "numpy_full" not in load_bench().main([*TINY, "--out", "-"])["results"][0]  # the softmax: no closed form
    full = result["numpy_full"]
    assert full["user_vectors_max_abs_diff"] < 1e-4 and full["overlap_with_jaxrec_mean"] == 1.0
    assert record["table"][0]["numpy_full_ms"] > 0
