"""Execute the notebooks in fast mode (``JAXREC_NOTEBOOK_FAST=1``) with nbclient and check their key outputs.

Each notebook runs in a temporary copy (the committed outputs stay untouched) on a ``python3`` kernel that is
this interpreter (a kernelspec written for the test, so a ``python3`` kernel of another environment is never
picked up), with matplotlib's headless inline backend.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CELL_TIMEOUT = 300


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """A ``python3`` kernelspec running this interpreter, found first through ``JUPYTER_PATH``."""
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (test)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JAXREC_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")
    return tmp_path


def execute(name: str, workdir: Path):
    """Run ``notebooks/<name>`` in a copy inside ``workdir``; return the executed notebook."""
    path = workdir / name
    shutil.copy(NOTEBOOKS / name, path)
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=CELL_TIMEOUT, resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            assert output.get("output_type") != "error", (cell.source, output)
    return nb


def cell_with(nb, text: str):
    matches = [c for c in nb.cells if c.cell_type == "code" and text in c.source]
    assert matches, f"no code cell contains {text!r}"
    return matches[-1]


def has_png(cell) -> bool:
    return any("image/png" in o.get("data", {}) for o in cell.outputs)


def rich_text(cell) -> str:
    parts = []
    for output in cell.outputs:
        data = output.get("data", {})
        parts.append(data.get("text/html", "") + data.get("text/plain", ""))
        parts.append(output.get("text", ""))
    return "\n".join(parts)


def test_quickstart(kernel_env):
    nb = execute("01_quickstart.ipynb", kernel_env)
    assert has_png(cell_with(nb, "exp.train_step"))  # the meta-training loss curve
    assert "MAE on the user's" in rich_text(cell_with(nb, "jaxrec.adapt("))
    table = rich_text(nb.cells[-1])
    assert "rank" in table and "predicted" in table
    assert table.count("<tr>") >= 10  # TOP_K recommendations


def test_cold_start(kernel_env):
    nb = execute("02_cold_start.ipynb", kernel_env)
    table = rich_text(cell_with(nb, "table = scenario_table("))
    assert "new_user" in table and "maml" in table and "finetune" in table
    curve = rich_text(cell_with(nb, "kshot = pd.DataFrame"))
    assert "no_adapt" in curve
    # every K scores the same query ratings (the support alone grows): no_adapt, which ignores the support, is flat
    plain = [
        line.split() for line in cell_with(nb, "kshot = pd.DataFrame").outputs[-1]["data"]["text/plain"].split("\n")
    ]
    header = next(row for row in plain if row and row[0] == "method")
    flat = {row[header.index("no_adapt")] for row in plain if row and row[0].isdigit()}
    assert len([row for row in plain if row and row[0].isdigit()]) == 3 and len(flat) == 1, plain
    assert has_png(cell_with(nb, "ax.errorbar"))


def test_cost(kernel_env):
    nb = execute("03_cost.ipynb", kernel_env)
    plot = cell_with(nb, "plt.subplots")
    assert has_png(plot)
    assert "second" in rich_text(cell_with(nb, "cost_table"))


def test_topn(kernel_env):
    nb = execute("04_topn.ipynb", kernel_env)
    table = rich_text(cell_with(nb, "table = method_table("))
    assert "maml" in table and "popular" in table and "recall@20" in table
    assert has_png(cell_with(nb, "ax.barh"))
    listed = rich_text(cell_with(nb, "recommender.top_k("))
    assert listed.count("<tr>") >= 21  # a header and twenty items
    assert "the same list as the recommender's: True" in rich_text(cell_with(nb, "export.export_arrays("))
