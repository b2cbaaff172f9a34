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
