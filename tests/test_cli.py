"""The ``jaxrec`` command, in-process: train -> metrics.json / metrics.jsonl / checkpoint, evaluate, recommend,
datasets, and the clear one-line errors."""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from cli_support import TINY_FLAGS, write_ratings
from conftest import SHARED_DATA

from jaxrec import cli


def one_clear_error(err: str) -> bool:
    """stderr of a failed command: exactly one ``jaxrec: error:`` line, the last; before it only the library's
    ``jaxrec: WARNING:`` lines (e.g. scenarios the data cannot fill); no traceback."""
    lines = err.rstrip("\n").split("\n")
    return (
        lines[-1].startswith("jaxrec: error:")
        and all(line.startswith("jaxrec: WARNING:") for line in lines[:-1])
        and "Traceback" not in err
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trained run folder (2 epochs of a tiny model on a tiny generic file) and the command's output."""
    root = tmp_path_factory.mktemp("cli")
    data = write_ratings(root / "ratings.csv", scale=10)
    out = root / "run"
    capture = pytest.MonkeyPatch()
    lines: list[str] = []
    capture.setattr(cli, "_echo", lambda *parts, err=False: lines.append(" ".join(map(str, parts))))
    try:
        code = cli.main(
            [
                "train",
                "--data",
                str(data),
                "--columns",
                "user,item,rating",
                "--sep",
                ",",
                *TINY_FLAGS,
                "--epochs",
                "2",
                "--out",
                str(out),
            ]
        )
    finally:
        capture.undo()
    assert code == 0, lines
    return {"out": out, "data": data, "output": "\n".join(lines)}


def test_train_writes_metrics_checkpoint_and_epoch_log(run):
    out = run["out"]
    document = json.loads((out / "metrics.json").read_text())
    assert set(document) == {
        "dataset",
        "config",
        "tuned",
        "data_report",
        "features",
        "tasks",
        "rating_scale",
        "scenarios",
    }
    assert document["data_report"]["ratings_kept"] == 60 * 15 and document["data_report"]["duplicates_removed"] == 0
    assert document["dataset"] == "ratings" and document["config"]["model"]["name"] == "mf"
    assert document["scenarios"], "no scenario evaluated"
    for methods in document["scenarios"].values():
        assert {"maml", "global_mean", "user_mean"} <= set(methods)
        for result in methods.values():
            assert {"mae", "rmse", "ndcg@3", "users"} <= set(result) and result["users"] > 0
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert all({"step", "loss", "grad_norm", "skipped", "skipped_in_epoch", "seconds"} <= set(r) for r in log)
    assert (out / "checkpoints").is_dir()
    assert "new_user" in run["output"] and "maml" in run["output"]  # the table
    # the meta-train users too short for a task, on the console (meta-train tasks have no upper cap)
    dropped = document["tasks"]["train"]["users_dropped"]
    assert (
        dropped > 0
        and f"note: train: {dropped} meta-train user(s) left out: too few ratings for a task (--min-ratings, --query)"
        in run["output"]
    )


def test_the_log_notes_count_what_reading_merged_or_left_out_and_no_warning_said():
    report = {"duplicates_removed": 2, "blank_lines_skipped": 1, "below_threshold_dropped": 5, "users_dropped": 1}
    assert cli._log_notes({**report, "items_dropped": 235}) == [
        "the log: 1 blank line(s) skipped; 5 rating(s) below the positive threshold left out; 1 user(s) and 235 "
        "item(s) left with no row"
    ]
    assert cli._log_notes({"duplicates_removed": 3, "users_dropped": 0}) == []  # a warning says it already


def test_users_without_a_header_in_the_logs_own_layout_are_read_by_the_runs_columns(tmp_path, monkeypatch):
    """A headerless file of six columns (a Last.fm log: user, time, artist id, artist, track id, track) in the layout
    the run read its log by was refused with the Python API's remedy (columns=[...]); it is read by the run's
    --columns, as a file whose header has none of the common names is, and the note says which."""
    import argparse

    table = tmp_path / "plays.tsv"
    table.write_text(
        'u1\t2008-02-19T00:10:03Z\tmb-1\tArtist, "A"\ttr-1\tSong 1\nu1\t2008-02-19T00:20:00Z\tmb-2\tB\ttr-2\tS2\n'
    )
    with pytest.raises(cli.UnnamedColumnsError, match=r"6 columns without a header.*--columns user,item,_"):
        cli.read_users(table)
    args = argparse.Namespace(users=str(table), columns=None, sep=None, encoding="utf-8", checkpoint="run")
    monkeypatch.setattr(cli, "read_metadata", lambda _: {"config": {"data": {"columns": "user,timestamp,_,_,item,_"}}})
    said = []
    monkeypatch.setattr(cli, "_echo", lambda *parts, err=False: said.append(" ".join(map(str, parts))))
    users = cli._read_users_as_trained(args)
    assert users["user"].tolist() == ["u1", "u1"] and users["item"].tolist() == ["tr-1", "tr-2"]
    assert said == [f"note: --users {table} read by the run's --columns user,timestamp,_,_,item,_ (it has no header)"]
    # where the run's layout fits and a value does not, the value's line is the error, not the layout
    table.write_text(table.read_text().replace("\ttr-2\t", "\t\t"))
    with pytest.raises(
        cli.DataError,
        match=r"plays.tsv: line 2: the item id is missing \(the file read by the run's "
        r"--columns user,timestamp,_,_,item,_: it has no header\)$",
    ):
        cli._read_users_as_trained(args)


@pytest.mark.skipif(not (SHARED_DATA / "ml-100k").is_dir(), reason=f"ml-100k not found under {SHARED_DATA}")
def test_the_log_notes_name_the_user_whose_every_rating_is_below_the_threshold_on_ml100k():
    """On ml-100k at a threshold of 4 one user and 235 items lose every row; the user was named nowhere."""
    from jaxrec.experiment import ExperimentConfig
    from jaxrec.experiment.topn import implicit_dataset

    config = ExperimentConfig.make(
        dataset="ml-100k", data_dir=str(SHARED_DATA), feedback="implicit", positive_threshold=4.0
    )
    report = implicit_dataset(config).report
    (note,) = cli._log_notes(report)
    below = report["below_threshold_dropped"]
    assert below > 40_000 and report["users_dropped"] == 1 and report["items_dropped"] > 200
    assert f"{below} rating(s) below the positive threshold left out" in note
    assert f"1 user(s) and {report['items_dropped']} item(s) left with no row" in note


def test_evaluate_prints_the_table_and_writes_the_document(run, tmp_path, capsys):
    target = tmp_path / "again.json"
    assert (
        cli.main(["evaluate", "--checkpoint", str(run["out"]), "--data", str(run["data"]), "--output", str(target)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "scenario" in printed and "maml" in printed
    assert (
        json.loads(target.read_text())["scenarios"]
        == json.loads((run["out"] / "metrics.json").read_text())["scenarios"]
    )


def test_recommend_into_a_pipe_closed_early_ends_quietly(run, tmp_path):
    """``jaxrec recommend ... | head -1`` printed "jaxrec: error: broken pipe"."""
    ratings = tmp_path / "me.csv"
    ratings.write_text("item,rating\n100,9\n101,2\n")
    command = [sys.executable, "-m", "jaxrec", "recommend", "--checkpoint", str(run["out"]), "--ratings", str(ratings)]
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has left before the first line: every write fails
    try:
        done = subprocess.run(command, stdout=write_end, stderr=subprocess.PIPE, timeout=120, check=False)
    finally:
        os.close(write_end)
    err = done.stderr.decode()
    assert "broken pipe" not in err.lower() and "Traceback" not in err and "error" not in err, err
    assert done.returncode == 128 + signal.SIGPIPE


def test_recommend_prints_unrated_top_k(run, tmp_path, capsys):
    ratings = tmp_path / "me.csv"
    ratings.write_text("item,rating\n100,9\n101,2\n101,3\n999999,5\n")
    assert (
        cli.main(["recommend", "--checkpoint", str(run["out"]), "--ratings", str(ratings), "-k", "5", "--timing"]) == 0
    )
    captured = capsys.readouterr()
    ranked = [line for line in captured.out.splitlines() if line.strip()[:2].rstrip(".").isdigit()]
    assert len(ranked) == 5
    assert not any("(item 100," in line or "(item 101," in line for line in ranked)  # rated items are excluded
    assert "unknown item id(s): 999999" in captured.err and "duplicate" in captured.err
    assert "warm median" in captured.out


@pytest.mark.parametrize("first", ["100,4.5 stars", "100,nan", "100,"])
def test_a_first_line_of_data_with_a_bad_value_is_refused_not_taken_for_a_header(run, tmp_path, capsys, first):
    """A first row whose value is not a number was read as a header and dropped unsaid, its item then listed back."""
    ratings = tmp_path / "me.csv"
    ratings.write_text(f"{first}\n101,2\n")
    assert cli.main(["recommend", "--checkpoint", str(run["out"]), "--ratings", str(ratings), "-k", "5"]) == 1
    assert "line 1: rating" in capsys.readouterr().err
    ratings.write_text("movieId,stars\n100,9\n101,2\n")  # a header names its columns
    assert cli.main(["recommend", "--checkpoint", str(run["out"]), "--ratings", str(ratings), "-k", "5"]) == 0
    ratings.write_text("ISBN,Book-Rating\n100,9\n101,2\n")  # or holds no item and no number
    assert cli.main(["recommend", "--checkpoint", str(run["out"]), "--ratings", str(ratings), "-k", "5"]) == 0
    assert "a new user with 2 rating(s)" in capsys.readouterr().out


def test_recommend_reads_a_ratings_file_in_the_encoding_given(run, tmp_path, capsys):
    """--encoding was read for --users alone: a ratings file in another encoding failed as unparsable lines."""
    ratings = tmp_path / "me.csv"
    ratings.write_bytes("item,rating\n100,9\ndéjà vu,8\n".encode("latin-1"))
    argv = ["recommend", "--checkpoint", str(run["out"]), "--ratings", str(ratings), "-k", "3"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "me.csv: line 3 is not utf-8 text (byte(s) e9 at column 2)" in err and "--encoding latin-1" in err
    assert "Traceback" not in err
    assert cli.main([*argv, "--encoding", "latin-1"]) == 0
    captured = capsys.readouterr()
    assert "for a new user with 1 rating(s)" in captured.out and "unknown item id(s): déjà vu" in captured.err
    ratings.write_bytes("item,rating\n100,9\n104,8\n".encode("utf-16"))
    assert cli.main([*argv, "--encoding", "utf-16"]) == 0
    assert "for a new user with 2 rating(s)" in capsys.readouterr().out


def test_recommend_with_a_single_rating_and_no_header(run, tmp_path, capsys):
    ratings = tmp_path / "one.csv"
    ratings.write_text("105,7\n")
    argv = ["recommend", "--checkpoint", str(run["out"]), "--ratings", str(ratings), "-k", "3"]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert "for a new user with 1 rating(s)" in out and "--model-alone" not in err
    # a flag that leaves out what the run does not have is said to change nothing, not silently taken
    assert cli.main([*argv, "--model-alone"]) == 0
    again, err = capsys.readouterr()
    assert again == out and "note: --model-alone changes nothing here: the run has no hybrid and no re-ranker" in err
    assert cli.main([*argv, "--no-rerank"]) == 0
    again, err = capsys.readouterr()
    assert again == out and "note: --no-rerank changes nothing here: the run has no re-ranker" in err


@pytest.mark.parametrize(
    "content, message",
    [
        ("item,rating\n999998,5\n", "such a user the model's list before adaptation"),
        ("item,rating\n100,great\n", "line 2: rating 'great' is not a number"),
        ("item,rating\n100,11\n", "outside the model's rating scale"),
        ("item,rating\n", "no ratings"),
        ("", "empty"),
        ("100\n101\n", "expected lines of item,rating separated by a comma"),
    ],
)
def test_recommend_rejects_bad_ratings_files_clearly(run, tmp_path, capsys, content, message):
    ratings = tmp_path / "bad.csv"
    ratings.write_text(content)
    assert cli.main(["recommend", "--checkpoint", str(run["out"]), "--ratings", str(ratings)]) == 1
    err = capsys.readouterr().err
    assert one_clear_error(err) and message in err


def test_a_finished_run_is_not_overwritten_and_resume_cannot_change_the_model(run, capsys):
    assert cli.main(["train", "--data", str(run["data"]), *TINY_FLAGS, "--out", str(run["out"])]) == 1
    assert "already holds a run" in capsys.readouterr().err
    assert cli.main(["train", "--out", str(run["out"]), "--resume", "--model", "melu"]) == 1
    assert "cannot change --model on --resume" in capsys.readouterr().err
    # an option this rating run never reads is named as such, not as a change of what the run recorded
    assert cli.main(["train", "--out", str(run["out"]), "--resume", "--shots", "3"]) == 1
    err = capsys.readouterr().err
    assert "--shots needs --feedback implicit" in err and "cannot change" not in err


def test_corrupt_or_missing_checkpoint_is_one_clear_line(run, tmp_path, capsys):
    assert cli.main(["evaluate", "--checkpoint", str(tmp_path / "nowhere")]) == 1
    assert "no such checkpoint folder" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(run["out"], broken)
    for step in (broken / "checkpoints").iterdir():
        for path in (step / "state").rglob("*"):
            if path.is_file() and path.stat().st_size > 0:
                path.write_bytes(b"\x00garbage")
    assert cli.main(["evaluate", "--checkpoint", str(broken), "--data", str(run["data"])]) == 1
    assert one_clear_error(capsys.readouterr().err)


def test_data_changed_since_training_is_detected(run, tmp_path, capsys):
    moved = tmp_path / "moved"
    shutil.copytree(run["out"], moved)
    original = run["data"].read_text()
    try:
        run["data"].write_text(original + "61,100,5\n" * 1 + "".join(f"61,{100 + i},5\n" for i in range(1, 15)))
        assert cli.main(["evaluate", "--checkpoint", str(moved), "--data", str(run["data"])]) == 1
        assert "no longer matches the checkpoint" in capsys.readouterr().err
    finally:
        run["data"].write_text(original)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--data", "/no/such/file.csv"], "file not found"),
        (["train", "--batch-size", "0"], "--batch-size must be positive"),
        (["train", "--devices", "many"], "--devices expects a number"),
        (["train", "--item-dropout", "1"], "--item-dropout must be in [0, 1)"),
        (["train", "--groups", "0"], "--groups must be >= 1"),
        (["train", "--resume", "--out", "/no/such/run"], "holds no checkpoints"),
    ],
)
def test_bad_flags_are_one_clear_line(tmp_path, capsys, argv, message):
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert one_clear_error(err) and message in err


def test_usage_errors_exit_2(capsys):
    assert cli.main(["train", "--order", "third"]) == 2
    assert cli.main([]) == 2


@pytest.mark.parametrize(
    "argv, hint",
    [
        (
            ["evaluate", "--checkpoint", "run", "--feedback", "implicit"],
            "--feedback: a training setting, fixed by the run that `jaxrec train` made",
        ),
        (
            ["recommend", "--checkpoint", "run", "--ratings", "r.csv", "--epochs=3", "--positive-threshold", "4"],
            "(--epochs: a training setting, fixed by the run that `jaxrec train` made; --positive-threshold: a",
        ),
        (["evaluate", "--checkpoint", "run", "--feed", "implicit"], "--feedback: a training setting"),
        (
            ["recommend", "--checkpoint", "run", "--ratings", "r.csv", "--bootstrap", "9"],
            "`jaxrec train` and `jaxrec evaluate`",
        ),
        (
            ["recommend", "--checkpoint", "run", "--ratings", "r.csv", "--no-progress"],
            "--no-progress: an option of `jaxrec train` and `jaxrec evaluate`",
        ),
        (["export", "--checkpoint", "run", "--out", "a.npz", "--no-such-flag"], None),
        (["train", "--no-such-flag"], None),
    ],
)
def test_an_option_of_another_command_given_to_a_command_of_a_run_says_whose_it_is(capsys, argv, hint):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments:" in err
    assert (hint in err) if hint else ("training setting" not in err and "an option of" not in err)


def test_datasets_lists_the_bundled_default(tmp_path, capsys):
    assert cli.main(["datasets", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ml-latest-small" in out and "bundled" in out and "ml-1m" in out and str(tmp_path) in out


def test_devices_flag_splits_a_cpu_host_into_that_many_devices():
    # a fresh interpreter: the host device count can only change before JAX starts its backends
    code = (
        "import jax, jaxrec; from jaxrec import cli; cli._host_devices('2'); "
        "print(jax.default_backend(), jax.device_count(), jaxrec.make_mesh(2).devices.size)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    backend, count, mesh = out.stdout.split()
    if backend != "cpu":
        pytest.skip(f"the flag splits CPU hosts only; this backend is {backend}")
    assert (int(count), int(mesh)) == (2, 2)


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--groups", "2"], {"groups": 2}),
        (["--inner-solver", "newton", "--adapt", "head/output"], {"inner_solver": "newton", "adapt": "head/output"}),
    ],
)
def test_grouped_and_newton_runs_train_evaluate_and_recommend(tmp_path, capsys, extra, expected):
    data = write_ratings(tmp_path / "ratings.csv", scale=10)
    melu = '{"embed": 4, "hidden": [8], "use_ids": ["item"], "interaction": null, "item_bias": true}'
    out = tmp_path / "run"
    flags = [*TINY_FLAGS, "--model", "melu", "--model-kwargs", melu, *extra, "--epochs", "2"]
    assert cli.main(["train", "--data", str(data), *flags, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {key: metrics["config"]["meta"][key] for key in expected} == expected
    assert all(np.isfinite(m["mae"]) for scenario in metrics["scenarios"].values() for m in scenario.values())
    assert cli.main(["evaluate", "--checkpoint", str(out), "--data", str(data)]) == 0
    ratings = tmp_path / "me.csv"
    ratings.write_text("item,rating\n100,9\n101,2\n")
    capsys.readouterr()
    assert cli.main(["recommend", "--checkpoint", str(out), "--ratings", str(ratings), "-k", "3"]) == 0
    ranked = [line for line in capsys.readouterr().out.splitlines() if line.strip()[:2].rstrip(".").isdigit()]
    assert len(ranked) == 3


def test_resume_compares_the_flags_as_the_run_resolved_its_own(monkeypatch, tmp_path):
    """A run records its config resolved (MAMO adds its memories to --frozen): the original --frozen given again on
    resume was refused as a change of --frozen."""
    from jaxrec.experiment import ExperimentConfig, run
    from jaxrec.experiment.config import resolve
    from jaxrec.methods import recipe

    asked = ExperimentConfig.make(**recipe("mamo"), frozen="^params/user_")
    recorded = resolve(asked)
    assert recorded.meta.frozen != asked.meta.frozen  # what the record holds is not what was asked
    monkeypatch.setattr("jaxrec.experiment.run.read_metadata", lambda folder: {"config": recorded.to_dict()})
    assert run.resume_config(tmp_path, {"frozen": "^params/user_", "epochs": 3}).meta.frozen == recorded.meta.frozen
    with pytest.raises(cli.CLIError, match="cannot change --frozen"):
        run.resume_config(tmp_path, {"frozen": "^params/item_"})


def test_resume_keeps_the_recorded_config_and_refuses_an_older_record(monkeypatch, tmp_path):
    from jaxrec.experiment import ExperimentConfig, run

    recorded = ExperimentConfig.make(item_dropout=0.0, inner_solver="sgd").to_dict()
    monkeypatch.setattr("jaxrec.experiment.run.read_metadata", lambda folder: {"config": recorded})
    config = run.resume_config(tmp_path, {"groups": 1, "item_dropout": 0.0, "epochs": 3})
    assert config.meta.groups == 1 and config.meta.epochs == 3
    config = run.resume_config(tmp_path, {})
    assert (config.meta.item_dropout, config.meta.groups, config.meta.inner_solver) == (0.0, 1, "sgd")
    with pytest.raises(cli.CLIError, match="cannot change --item-dropout"):
        run.resume_config(tmp_path, {"item_dropout": 0.25})
    with pytest.raises(cli.CLIError, match="cannot change --groups"):
        run.resume_config(tmp_path, {"groups": 2})
    # the kind of run first: the record's rating options are not read as options given to a top-N run
    with pytest.raises(cli.CLIError, match="cannot change --feedback on --resume .*explicit"):
        run.resume_config(tmp_path, {"feedback": "implicit"})
    assert run.resume_config(tmp_path, {"feedback": "explicit"}).data.feedback in (None, "explicit")
    # a jaxrec 0.1 checkpoint (a flat config record) is refused with one message, not read through old defaults
    older = ExperimentConfig().flat()
    monkeypatch.setattr("jaxrec.experiment.run.read_metadata", lambda folder: {"config": older})
    with pytest.raises(cli.CLIError, match="jaxrec 0.1 record"):
        run.resume_config(tmp_path, {})


def test_cli_log_handler_follows_the_current_stderr(monkeypatch, capsys):
    """The handler installed by the first command must not write to that call's (since closed) stderr later."""
    import io
    import logging

    cli._configure_logging(False)
    old = io.StringIO()
    monkeypatch.setattr("sys.stderr", old)
    logging.getLogger("jaxrec.test").warning("first")
    old.close()  # as a test's capture closes its stream
    new = io.StringIO()
    monkeypatch.setattr("sys.stderr", new)
    logging.getLogger("jaxrec.test").warning("second")
    assert new.getvalue() == "jaxrec: WARNING: second\n"


def test_a_fresh_run_never_mixes_with_another_runs_files(tmp_path, capsys):
    data = write_ratings(tmp_path / "ratings.csv")
    out = tmp_path / "run"
    out.mkdir()
    stale = '{"epoch": 1, "step": 7, "loss": 0.5}\n'
    (out / "metrics.jsonl").write_text(stale)  # e.g. a first run killed during its very first save
    (out / "notes.txt").write_text("mine")
    flags = [*TINY_FLAGS, "--epochs", "1", "--no-eval"]
    assert cli.main(["train", "--data", str(data), *flags, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert one_clear_error(err) and "metrics.jsonl" in err and "--overwrite" in err
    assert (out / "metrics.jsonl").read_text() == stale  # refused: nothing touched
    assert cli.main(["train", "--data", str(data), *flags, "--out", str(out), "--overwrite"]) == 0
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in log] == [1] and log[0]["step"] != 7  # one clean log of the new run
    assert (out / "notes.txt").read_text() == "mine"  # files that are not a run's are left alone
    assert cli.main(["train", "--data", str(data), *flags, "--out", str(out), "--resume", "--overwrite"]) == 1
    assert "pass one of them" in capsys.readouterr().err


def test_a_diverged_run_reports_no_figure_and_finishes(tmp_path, capsys):
    """Every meta-step non-finite (an inner rate of 1e30; the bundled set, the default model, whose MLP then scores
    NaN): the run still writes its metrics, with null where a figure would be, errors and rankings alike (its NaN
    scores once ranked as a perfect nDCG; the log's line then failed on the null)."""
    out = tmp_path / "run"
    argv = ["train", "--epochs", "1", "--steps", "2", "--inner-solver", "sgd", "--inner-lr", "1e30"]
    argv += ["--tune-inner-lr", "false", "--baselines", "global_mean", "--bootstrap", "10", "--no-progress", "--out"]
    assert cli.main([*argv, str(out)]) == 0, capsys.readouterr().err
    scenarios = json.loads((out / "metrics.json").read_text())["scenarios"]
    maml = [methods["maml"] for methods in scenarios.values()]
    assert maml and all(m["mae"] is None and m["ndcg@3"] is None for m in maml)
    assert all(np.isfinite(methods["global_mean"]["ndcg@3"]) for methods in scenarios.values())


def test_a_run_stopped_before_its_first_checkpoint_starts_again(tmp_path, capsys):
    """Killed before its first save, a run leaves its catalogue and an empty checkpoint folder: --resume said there
    was no checkpoint while a new run said the folder held one; now --resume says to start again, and a new run
    may."""
    data = write_ratings(tmp_path / "ratings.csv")
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "items.csv.gz").write_bytes(b"left by the killed run")
    argv = ["train", "--data", str(data), "--columns", "user,item,rating", "--sep", ",", *TINY_FLAGS, "--epochs", "1"]
    assert cli.main([*argv, "--out", str(out), "--resume"]) == 1
    err = capsys.readouterr().err
    assert one_clear_error(err) and "stopped before its first checkpoint" in err and "without --resume" in err
    assert cli.main([*argv, "--out", str(out)]) == 0, capsys.readouterr().err
    assert (out / "metrics.json").is_file()
    assert cli.main([*argv, "--out", str(out)]) == 1  # a run that saved is another matter
    assert "already holds a run" in capsys.readouterr().err
    # one that logged an epoch before it was killed in its first save keeps its log until told: --overwrite
    shutil.rmtree(out / "checkpoints")
    (out / "metrics.json").unlink()
    for flags in ([], ["--resume"]):
        (out / "checkpoints").mkdir(exist_ok=True)
        assert cli.main([*argv, "--out", str(out), *flags]) == 1
        err = capsys.readouterr().err
        assert one_clear_error(err) and "no complete checkpoint" in err and "--overwrite" in err, err


def test_a_bad_predictions_folder_fails_before_the_training(tmp_path, capsys):
    data = write_ratings(tmp_path / "ratings.csv")
    (tmp_path / "afile").write_text("hi")
    argv = ["train", "--data", str(data), "--columns", "user,item,rating", "--sep", ",", *TINY_FLAGS, "--epochs", "1"]
    assert cli.main([*argv, "--out", str(tmp_path / "run"), "--save-predictions", str(tmp_path / "afile")]) == 1
    err = capsys.readouterr().err
    assert one_clear_error(err) and "a file, not a folder" in err
    assert not (tmp_path / "run").exists()  # nothing trained


MY_MODELS = """
import jaxrec
from test_models import _BiasDot


class BiasDot(_BiasDot):  # a class of its own: a class is registered under one name
    pass


jaxrec.models.register("{name}", BiasDot)
"""


def test_a_model_of_ones_own_is_trained_and_recommended_from_the_command_line(tmp_path, monkeypatch, capsys):
    """``--import MODULE``: a module of the current folder that registers a model; ``train`` names the model and
    ``recommend`` reads the run back; without the module the run's model is named with the flag that loads it."""
    import sys

    from jaxrec.models import registry

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_models_cli.py").write_text(MY_MODELS.replace("{name}", "biasdot_cli"))
    data = write_ratings(tmp_path / "ratings.csv", scale=10)
    flags = ["--data", str(data), "--columns", "user,item,rating", "--sep", ","]
    tiny = [*TINY_FLAGS[2:], "--epochs", "1", "--pretrain", "false"]  # TINY_FLAGS without its --model mf
    ratings = tmp_path / "me.csv"
    ratings.write_text("item,rating\n100,9\n101,2\n")
    recommend = ["recommend", "--checkpoint", "run", "--ratings", str(ratings), "-k", "3"]
    try:
        train = ["train", *flags, "--model", "biasdot_cli", "--model-kwargs", '{"embed": 4}', *tiny, "--out", "run"]
        code = cli.main(train)  # not registered: refused, and told how
        assert code == 1 and "--import MODULE" in capsys.readouterr().err and not (tmp_path / "run").exists()
        assert cli.main(["train", "--import", "my_models_cli", *train[1:]]) == 0, capsys.readouterr().err
        assert cli.main(["recommend", "--import", "my_models_cli", *recommend[1:]]) == 0
        listed = [line for line in capsys.readouterr().out.splitlines() if line.strip()[:2].rstrip(".").isdigit()]
        assert len(listed) == 3
        registry.MODELS.pop("biasdot_cli")
        sys.modules.pop("my_models_cli")
        assert cli.main(recommend) == 1
        assert "--import MODULE" in capsys.readouterr().err
        assert cli.main(["recommend", "--import", "no_such_module_here", *recommend[1:]]) == 1
        assert "--import no_such_module_here: No module named" in capsys.readouterr().err
        (tmp_path / "needs_more.py").write_text("import not_installed_anywhere\n")
        assert cli.main(["recommend", "--import", "needs_more", *recommend[1:]]) == 1
        said = capsys.readouterr().err
        assert "--import needs_more: the module imports what is not installed" in said, said
        assert str(tmp_path) not in sys.path  # the command put its folder on the path for its imports alone
    finally:
        registry.MODELS.pop("biasdot_cli", None)
        sys.modules.pop("my_models_cli", None)


def test_resume_takes_the_config_that_started_the_run_and_refuses_another(tmp_path, capsys, monkeypatch):
    """The original command repeated with --resume continues the run: its --config (or --method) must describe the
    recorded run (a field differing is named; a grid's ``1`` is the flag's ``1.0``), the file's data path names the
    log again as --data does (from the current folder, checked), and the fields a resume may change that the file
    sets (its epochs) count as their flags do, noted; a flag is no change of the file's, and a default the file does
    not set undoes nothing."""
    from jaxrec.experiment import ExperimentConfig

    monkeypatch.chdir(tmp_path)
    data, out = write_ratings(tmp_path / "ratings.csv"), tmp_path / "run"
    fields = dict(model="mf", model_kwargs={"embed": 4}, order="first", inner_steps=1, batch_size=8, epochs=2)
    fields.update(data=data.name, columns="user,item,rating", sep=",", inner_lr=1, baselines=("global_mean",))
    for name, changed in (("config", {}), ("other", {"inner_steps": 2}), ("longer", {"epochs": 3})):
        record = ExperimentConfig.make(**{**fields, **changed}).to_dict()
        (tmp_path / f"{name}.json").write_text(json.dumps(record))
    argv = ["train", "--no-progress", "--out", str(out)]
    assert cli.main([*argv, "--config", "config.json", "--bootstrap", "10", "--steps", "1", "--no-eval"]) == 0
    assert not (out / "metrics.json").exists()
    capsys.readouterr()
    assert cli.main([*argv, "--config", "other.json", "--resume"]) == 1
    err = capsys.readouterr().err
    assert one_clear_error(err) and "describes another run" in err and "(it differs in --inner-steps)" in err
    again = [*argv, "--config", "config.json", "--inner-lr", "1.0", "--resume"]
    assert cli.main([*again, "--epochs", "2", "--steps", "2", "--no-eval"]) == 0, capsys.readouterr().err
    assert "note: --resume" not in capsys.readouterr().err  # nothing changes; --epochs is the flag's own
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert cli.main([*argv, "--config", "../longer.json", "--resume"]) == 1
    err = capsys.readouterr().err
    assert one_clear_error(err) and "--data ratings.csv (of --config ../longer.json): file not found" in err
    monkeypatch.chdir(tmp_path)
    assert cli.main([*argv, "--config", "longer.json", "--resume"]) == 0
    err = capsys.readouterr().err
    assert "note: --resume: --epochs 3 as --config longer.json gives" in err and "--bootstrap" not in err
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    metrics = json.loads((out / "metrics.json").read_text())
    assert epochs == [1, 2, 3] and metrics["scenarios"] and metrics["config"]["evaluation"]["bootstrap"] == 10


def test_the_recency_line_says_a_strength_of_zero_weighs_every_item_alike():
    assert cli._recency_said(4) == "weigh a user's items by their order, oldest first (strength 4, chosen on " \
        "validation users)"  # fmt: skip
    assert cli._recency_said(0.0).startswith("weigh a user's items alike, whatever their order (strength 0,")
