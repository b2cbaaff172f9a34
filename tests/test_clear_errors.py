"""Mistakes that used to pass silently or with a puzzling message: each is one clear error naming what to change."""

import jax.numpy as jnp
import numpy as np
import pytest
from cli_support import TINY_FLAGS

from jaxrec import cli
from jaxrec.evaluation.metrics import ndcg_at_k


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("jaxrec: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "columns, message",
    [
        ("user,user,rating", "names 'user' more than once"),
        ("user,_,rating", "has no item column"),
        ("_,item,rating", "has no user column"),
    ],
)
def test_columns_that_do_not_name_a_user_and_an_item_once(tmp_path, capsys, columns, message):
    data = write(tmp_path / "log.csv", "a,b,c\n1,2,3\n1,3,4\n")
    assert cli.main(["train", "--data", str(data), "--columns", columns, "--out", str(tmp_path / "run")]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert message in line and "log.csv" in line


def test_a_log_without_a_rating_column_is_not_trained_as_ratings_of_one(tmp_path, capsys):
    lines = "".join(f"{u},{100 + (u * 7 + i) % 40}\n" for u in range(60) for i in range(15))
    data = write(tmp_path / "clicks.csv", "user,item\n" + lines)
    out = tmp_path / "run"
    assert cli.main(["train", "--data", str(data), *TINY_FLAGS, "--out", str(out)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "no rating column" in line and "clicks.csv" in line and "--columns" in line
    assert not (out / "metrics.json").exists()


def test_no_meta_train_task_names_the_flags_that_would_help(tmp_path, capsys):
    data = write(
        tmp_path / "few.csv", "user,item,rating\n" + "".join(f"{u},{i},3\n" for u in range(30) for i in range(5))
    )
    assert cli.main(["train", "--data", str(data), *TINY_FLAGS, "--out", str(tmp_path / "run")]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "no meta-train task" in line and "--min-ratings" in line and "--query" in line


@pytest.mark.parametrize(
    "scores, targets",
    [
        ([0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3], [5.0, 4.0, 4.0, 3.0, 1.0, 2.0, 5.0]),  # every score tied
        ([1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 0.5], [4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0]),  # every target equal
        ([0.1, 0.7, 0.7, 0.2, 0.9, 0.9, 0.9], [1.0, 3.0, 3.0, 2.0, 5.0, 5.0, 5.0]),  # ties in the right order
        # tied scores over equal targets: the two sums round apart, 1.0000001 before nDCG was clipped to the ideal
        ([2.0, 1.0, 0.0, 2.0, 2.0, 0.0, 1.0, 2.0, 2.0], [5.0] * 9),
    ],
)
def test_ndcg_is_a_fraction_of_the_ideal_with_ties(scores, targets):
    mask = jnp.ones(len(scores), bool)
    for k in (1, 3, 10):
        value, weight = ndcg_at_k(jnp.asarray(scores, jnp.float32), jnp.asarray(targets, jnp.float32), mask, k)
        assert 0.0 <= float(value) <= 1.0 and float(weight) == 1.0
    # a perfect ranking is exactly 1
    order = np.argsort(targets)[::-1]
    perfect = np.empty(len(targets), np.float32)
    perfect[order] = np.arange(len(targets), 0, -1)
    value, _ = ndcg_at_k(jnp.asarray(perfect), jnp.asarray(targets, jnp.float32), mask, 3)
    assert float(value) == pytest.approx(1.0, abs=1e-6)
