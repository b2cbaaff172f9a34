"""The README's code runs as written, and its test command is the one CI runs."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_meta_train_example_runs_as_written(capsys):
    # the first python block is the complete meta_train example
    block = code_blocks("python")[0]
    assert "jaxrec.meta_train(" in block
    exec(compile(block, "README.md", "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    before, after = map(float, re.search(r"query loss after adaptation: ([\d.]+) -> ([\d.]+)", out).groups())
    assert after < 0.6 * before, out  # meta-training really helps adaptation on the synthetic family
    assert "compiled 1 time(s)" in out


def test_quickstart_has_two_shell_blocks_and_ci_runs_the_test_command():
    quickstart = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", quickstart, flags=re.S)
    assert len(blocks) == 2
    assert "jaxrec train" in blocks[0]
    test_command = blocks[1].strip().splitlines()[-1]
    assert test_command.startswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    if test_command not in ci:
        pytest.fail(f".ci/run does not run the README's test command {test_command!r}")


def test_the_data_tasks_and_models_block_runs_on_a_plain_log(tmp_path):
    """The block of `Data, tasks and models`, on a log of ids, ratings and times alone (no side features): its MeLU
    needed `use_ids` there, and `meta_evaluate` an `apply_fn` the prose hid behind `...`. Steps cut to 2."""
    import jax
    import numpy as np

    import jaxrec

    block = code_blocks("text")[0]
    rng = np.random.default_rng(0)
    rows = [
        f"u{u},i{i},{1 + (u + i) % 5},{1000 * u + t}"
        for u in range(80)
        for t, i in enumerate(rng.choice(60, 25, replace=False))
    ]
    log = tmp_path / "log.csv"
    log.write_text("user,item,rating,timestamp\n" + "\n".join(rows) + "\n")
    lines = [line for line in block.splitlines() if "ml-100k" not in line]  # a MovieLens folder this test need not have
    code = "\n".join(lines).replace('"log.csv"', repr(str(log))).replace("steps=500", "steps=2")
    scope = {"jaxrec": jaxrec, "jax": jax}
    exec(compile(code, "README.md", "exec"), scope)
    prose = re.search(r"`(jaxrec\.meta_evaluate\(params, test_tasks, [^`]*)`", README).group(1)
    scope["test_tasks"] = jaxrec.build_tasks(scope["split"].scenarios["new_user"], scope["featurizer"], split="melu")
    result = eval(prose, scope)
    assert np.isfinite(result["mae"]) and result["users"] > 0
