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
    assert "--feedback implicit" in line and "not available" not in line  # top-N training is: say how to ask for it
    assert not (out / "metrics.json").exists()


def test_a_rated_datas_config_on_a_click_log_says_how_to_unset_its_threshold(tmp_path, capsys):
    """The top-N configs of benchmarks/ keep MovieLens ratings >= 4; on a log without ratings the threshold cannot
    apply, and the error says how to leave it out (which then trains)."""
    lines = "".join(f"u{u},i{100 + (u * 7 + i) % 40}\n" for u in range(60) for i in range(15))
    data = write(tmp_path / "clicks.csv", "user,item\n" + lines)
    cut = TINY_FLAGS.index("--baselines")  # the rating baselines: a top-N run refuses them
    tiny = TINY_FLAGS[:cut] + TINY_FLAGS[cut + 2 :]
    flags = [
        "train",
        "--data",
        str(data),
        "--feedback",
        "implicit",
        "--positive-threshold",
        "4",
        *tiny,
        "--epochs",
        "1",
    ]
    assert cli.main([*flags, "--no-eval", "--out", str(tmp_path / "run")]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "no rating column is named" in line and "--positive-threshold none" in line and "clicks.csv" in line
    flags[flags.index("4")] = "none"
    assert cli.main([*flags, "--no-eval", "--no-progress", "--out", str(tmp_path / "run")]) == 0


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


def test_os_errors_are_one_line_that_says_what_the_os_refused(tmp_path, capsys):
    from cli_support import write_ratings

    data = write_ratings(tmp_path / "ratings.csv")
    taken = write(tmp_path / "a-file", "not a folder")
    assert cli.main(["train", "--data", str(data), *TINY_FLAGS, "--out", str(taken)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "cannot write the run folder" in line and "a-file" in line and "unexpected" not in line


def test_a_full_disk_while_saving_names_the_step_and_the_folder(tmp_path, capsys):
    import shutil
    import subprocess

    from cli_support import write_ratings

    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("no mount command to make a small file system")
    disk = tmp_path / "disk"
    disk.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(disk)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (not root, or no privilege): {made.stderr.decode().strip()}")
    try:
        data = write_ratings(tmp_path / "ratings.csv")
        out = disk / "run"
        assert cli.main(["train", "--data", str(data), *TINY_FLAGS, "--epochs", "3", "--out", str(out)]) == 1
        line = one_error_line(capsys.readouterr().err)
        assert "no space left on device while saving step" in line and str(out / "checkpoints") in line
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_damaged_checkpoint_names_the_step_and_the_file_and_nothing_else(tmp_path, damage):
    import subprocess
    import sys

    from cli_support import write_ratings

    data = write_ratings(tmp_path / "ratings.csv")
    out = tmp_path / "run"
    assert cli.main(["train", "--data", str(data), *TINY_FLAGS, "--epochs", "1", "--no-eval", "--out", str(out)]) == 0
    (step,) = [p for p in (out / "checkpoints").iterdir() if p.name.isdigit()]
    victim = max((p for p in (step / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    if damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:10])
    else:
        victim.unlink()
    # a real process: the tracebacks of a failed orbax restore appear at interpreter exit
    done = subprocess.run(
        [sys.executable, "-m", "jaxrec", "evaluate", "--checkpoint", str(out)], capture_output=True, text=True
    )
    assert done.returncode == 1
    line = one_error_line(done.stderr)
    assert f"step {step.name} is corrupt" in line and victim.name in line
    assert "Traceback" not in done.stderr and "Event loop is closed" not in done.stderr


def test_a_non_finite_rating_is_shown_as_written(tmp_path):
    import jaxrec.data as jd

    with pytest.raises(jd.DataError, match=r"line 3 is not a finite number: inf \("):
        jd.from_csv(write(tmp_path / "r.csv", "user,item,rating\n1,2,3\n1,3,inf\n"))


def test_rows_with_another_separator_than_the_header_are_named_as_such(tmp_path, capsys):
    data = write(tmp_path / "mixed.csv", "user,item,rating\n1\t2\t3\n1\t3\t4\n")
    assert cli.main(["train", "--data", str(data), "--sep", ",", "--out", str(tmp_path / "run")]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "mixed.csv: line 2" in line and "separated by '\\t'" in line and "missing" not in line


def test_a_write_refused_inside_tensorstore_is_named_as_the_os_error(tmp_path, monkeypatch, capsys):
    # tensorstore reports a full disk as ValueError("RESOURCE_EXHAUSTED ... [os_error_code='28']"), not OSError
    import orbax.checkpoint as ocp
    from cli_support import write_ratings

    def refuse(self, *args, **kwargs):
        raise ValueError("RESOURCE_EXHAUSTED: Error writing local file: No space left on device [os_error_code='28']")

    monkeypatch.setattr(ocp.CheckpointManager, "save", refuse)
    data = write_ratings(tmp_path / "ratings.csv")
    out = tmp_path / "run"
    assert cli.main(["train", "--data", str(data), *TINY_FLAGS, "--epochs", "1", "--out", str(out)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "no space left on device while saving step" in line and "unexpected" not in line


@pytest.mark.parametrize(("scale", "message"), [((0, 1), "no rating reaches it"), ((5, 9), "every rating reaches it")])
def test_binary_targets_of_one_class_are_refused(tmp_path, capsys, scale, message):
    """``--implicit true`` kept MovieLens's threshold 4 on any scale: a 0/1 log trained on labels all 0 and reported
    AUC, HR and nDCG of 0 for every method."""
    lo, hi = scale
    lines = "".join(
        f"{u},{100 + (u * 7 + i) % 40},{lo + (u + i) % (hi - lo + 1)}\n" for u in range(60) for i in range(15)
    )
    data = write(tmp_path / "likes.csv", "user,item,rating\n" + lines)
    flags = ["train", "--data", str(data), "--implicit", "true", *TINY_FLAGS, "--out", str(tmp_path / "run")]
    assert cli.main(flags) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "--implicit-threshold 4" in line and message in line and f"[{lo}, {hi}]" in line


def test_a_metric_no_user_defines_is_null_not_zero():
    """AUC needs a user with a positive and a negative; where no user has both it was reported as 0 (and 1 with an
    interval [0, 1] where a resample drew none of the few who had)."""
    from jaxrec.evaluation.metrics import paired_differences, summarize

    stats = {"n": np.array([3.0, 2.0]), "auc": np.zeros(2), "auc/w": np.zeros(2), "hr@1": np.array([1.0, 0.0])}
    stats["hr@1/w"] = np.ones(2)
    summary = summarize(stats, resamples=50, implicit=True)
    assert summary["auc"] is None and "auc" not in summary["ci95"] and summary["hr@1"] == 0.5
    assert set(paired_differences(stats, stats, resamples=20, implicit=True)) == {"hr@1"}
    one = dict(stats, **{"auc": np.array([0.75, 0.0]), "auc/w": np.array([1.0, 0.0])})
    summary = summarize(one, resamples=200, implicit=True)
    assert summary["auc"] == 0.75 and summary["ci95"]["auc"] == [0.75, 0.75]  # resamples without user 0 left out
