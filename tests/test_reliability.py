"""Issue 7: determinism, exact resume (API and ``jaxrec train --resume``), SIGINT/SIGTERM, non-finite steps."""

import gc
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from cli_support import TINY_FLAGS, write_ratings

from jaxrec import cli
from jaxrec.core.trainer import NonFiniteError
from jaxrec.experiment import Experiment, ExperimentConfig
from jaxrec.experiment.checkpoint import load_checkpoint, read_metadata
from jaxrec.experiment.protocol import config_mesh
from jaxrec.experiment.run import LOCK_FILE, FolderLock, check_fresh_out

TINY = dict(
    model="mf",
    model_kwargs={"embed": 4},
    order="first",
    inner_steps=1,
    batch_size=8,
    epochs=2,
    baselines=("global_mean", "user_mean"),
    bootstrap=10,
)


@pytest.fixture(scope="module")
def ratings_file(tmp_path_factory):
    return write_ratings(tmp_path_factory.mktemp("data") / "ratings.csv")


def tiny_experiment(data: Path, **overrides) -> Experiment:
    return Experiment(ExperimentConfig.make(data=str(data), **{**TINY, **overrides}))


@pytest.fixture(scope="module")
def experiment(ratings_file):
    """One experiment (one compiled meta-step) shared by the API tests."""
    return tiny_experiment(ratings_file)


def stop_step(experiment: Experiment) -> int:
    return experiment.steps_per_epoch + 2  # past an epoch boundary and inside the next epoch


@pytest.fixture(scope="module")
def straight(experiment, tmp_path_factory):
    """``(state, run folder)`` of an uninterrupted run of ``stop_step`` meta-steps."""
    out = tmp_path_factory.mktemp("straight")
    run = cli.TrainingRun(experiment, out)
    state, _ = run.train(run.start(resume=False), stop_step(experiment), progress=False)
    run.close()
    return state, out


def leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def assert_bitwise_equal(a, b) -> None:
    la, lb = leaves(a), leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def poison(monkeypatch, experiment: Experiment, at_step: int) -> None:
    """Make the batch of global step ``at_step`` carry a NaN rating in its first task's query set."""
    original = experiment.batches

    def batches(start_step=0):
        for step, batch in enumerate(original(start_step), start=start_step):
            if step == at_step:
                batch.query["rating"][0, 0] = np.nan
            yield batch

    monkeypatch.setattr(experiment, "batches", batches)


def _log_without_times(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in path.read_text().splitlines()]


# ----------------------------------------------------------------------------------------------------------------
# 1. determinism, 2. exact resume through the API


def test_same_seed_gives_bitwise_identical_params(experiment, ratings_file):
    first = experiment.train(steps=4)
    second = experiment.train(steps=4)
    assert int(first.step) == 4
    assert_bitwise_equal(first, second)
    rebuilt = tiny_experiment(ratings_file)  # everything before the compiled step is rebuilt identically
    assert_bitwise_equal(rebuilt.init_state(), experiment.init_state())
    assert_bitwise_equal(next(rebuilt.batches(3)), next(experiment.batches(3)))


def test_a_fresh_run_through_the_api_refuses_a_folder_holding_another_run(experiment, straight):
    """``jaxrec train`` checks the folder before it builds the run; a script driving :class:`TrainingRun` gets the
    same refusal from ``start(resume=False)``, before anything is written: runs never mix."""
    out = straight[1]
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    run = cli.TrainingRun(experiment, out)
    with pytest.raises(cli.RunError, match=r"already holds a run \(checkpoints at steps \[.*metrics.jsonl"):
        run.start(resume=False)
    run.close()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before


def test_one_process_trains_a_run_folder_at_a_time(experiment, straight, ratings_file, tmp_path, capsys):
    """A second run of a folder while the first lives (a job requeued beside its first run) is refused with the
    first's pid before it reads or removes anything: two writers deleted each other's checkpoints and interleaved
    their epoch logs, and --overwrite removed a living run's files. The folder is free once the first ends."""
    out = tmp_path / "run"
    shutil.copytree(straight[1], out)
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    holder = subprocess.Popen(  # another process training the folder: it holds the lock until told to go
        [sys.executable, "-c", HOLD, str(out / LOCK_FILE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        flags = ["train", "--data", str(ratings_file), *TINY_FLAGS, "--no-eval", "--out", str(out)]
        for extra in (["--overwrite"], ["--resume"]):
            assert cli.main([*flags, *extra]) == 1
            assert f"being trained by pid {holder.pid}" in capsys.readouterr().err
        assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before  # nothing removed
        with pytest.raises(cli.RunError, match=f"being trained by pid {holder.pid}"):
            cli.TrainingRun(experiment, out)
    finally:
        holder.communicate("go\n", timeout=30)
    with cli.TrainingRun(experiment, out):  # free again; within this process shared (a notebook cell run again)
        cli.TrainingRun(experiment, out).close()
        probe = subprocess.run([sys.executable, "-c", HOLD, str(out / LOCK_FILE)], input="", capture_output=True)
        assert probe.returncode != 0  # still held against other processes until the last holder lets it go
    assert (
        subprocess.run([sys.executable, "-c", HOLD, str(out / LOCK_FILE)], input="", capture_output=True).returncode
        == 0
    )


def test_a_folders_lock_is_let_go_by_an_unreleased_holder_and_follows_the_folder_not_its_path(tmp_path):
    """A TrainingRun never closed (the README's short form, a notebook cell run again) lets the folder go when it is
    collected; a folder deleted and made again under the same path is another folder, locked afresh; and clearing a
    folder from Python (check_fresh_out(overwrite=True)) takes the lock too."""
    out = tmp_path / "run"
    out.mkdir()

    def free() -> bool:  # another process can take the lock now
        return subprocess.run([sys.executable, "-c", HOLD, str(out / LOCK_FILE)], input="").returncode == 0

    held = FolderLock(out)
    assert not free()
    del held
    gc.collect()
    assert free()
    held = FolderLock(out)
    shutil.rmtree(out)
    out.mkdir()
    again = FolderLock(out)
    assert (out / LOCK_FILE).is_file() and not free()
    again.release()
    held.release()
    (out / "metrics.jsonl").write_text("{}\n")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out / LOCK_FILE)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(cli.RunError, match=f"being trained by pid {holder.pid}"):
            check_fresh_out(out, overwrite=True)
        assert (out / "metrics.jsonl").is_file()
    finally:
        holder.communicate("go\n", timeout=30)


def test_a_bad_config_leaves_no_run_folder_behind(tmp_path, capsys):
    assert cli.main(["train", "--inner-lr", "-1", "--out", str(tmp_path / "new")]) in (1, 2)
    assert not (tmp_path / "new").exists()


#: a process that holds a folder's lock as a training run does, until a line arrives on its stdin
HOLD = (
    "import fcntl, os, sys; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB); "
    "f.seek(0); f.truncate(); f.write(str(os.getpid())); f.flush(); print('held', flush=True); sys.stdin.readline()"
)


def test_resume_through_the_api_equals_an_uninterrupted_run(experiment, straight, tmp_path):
    run = cli.TrainingRun(experiment, tmp_path / "run")
    state, signum = run.train(run.start(resume=False), 3, progress=False)  # stop mid-epoch
    run.close()
    assert signum is None and read_metadata(tmp_path / "run")["data_position"]["step"] == 3

    run = cli.TrainingRun(experiment, tmp_path / "run")
    state = run.start(resume=True)  # from disk: params, optimiser state, step, skipped, data position
    assert int(state.step) == 3
    state, _ = run.train(state, stop_step(experiment), progress=False)
    run.close()
    assert_bitwise_equal(state, straight[0])
    assert _log_without_times(tmp_path / "run" / "metrics.jsonl") == _log_without_times(straight[1] / "metrics.jsonl")


def test_a_damaged_epoch_log_is_said_on_resume_naming_the_file(experiment, straight, tmp_path, caplog):
    """An unreadable line of metrics.jsonl (bytes of no text: an error of no file named) or epochs missing from it
    were dropped in silence on resume; a torn last line (a kill mid-write) still goes without a word."""

    def resume_with_log(name, damage):
        out = tmp_path / name
        shutil.copytree(straight[1], out)
        damage(out / "metrics.jsonl")
        caplog.clear()
        run = cli.TrainingRun(experiment, out)
        with caplog.at_level("WARNING", logger="jaxrec.experiment.run"):
            run.start(resume=True)
        run.close()
        return [r.getMessage() for r in caplog.records], (out / "metrics.jsonl")

    epoch_line = (straight[1] / "metrics.jsonl").read_bytes()
    said, log = resume_with_log("binary", lambda path: path.write_bytes(b"\xff\xfe\x00\n" + epoch_line))
    assert len(said) == 1 and "metrics.jsonl: line(s) 1 unreadable" in said[0]
    assert log.read_bytes() == epoch_line
    said, _ = resume_with_log("gone", lambda path: path.unlink())
    assert len(said) == 1 and "metrics.jsonl is missing: the 1 epoch(s) before step" in said[0]
    said, _ = resume_with_log("emptied", lambda path: path.write_text(""))
    assert len(said) == 1 and "holds 0 of the 1 epoch(s)" in said[0]
    said, log = resume_with_log("torn", lambda path: path.write_bytes(epoch_line + b'{"epoch": 2, "st'))
    assert said == [] and log.read_bytes() == epoch_line


def test_each_epoch_logs_its_own_seconds_not_the_time_since_the_run_began(experiment, tmp_path):
    """A pause inside the first epoch shows in its line alone: the second epoch's ``seconds`` is its own time."""
    pause = 2.0
    run = cli.TrainingRun(experiment, tmp_path / "run")
    began = time.perf_counter()
    run.train(
        run.start(resume=False),
        2 * experiment.steps_per_epoch,
        progress=False,
        on_step=lambda done: time.sleep(pause) if done == 1 else None,
    )
    wall = time.perf_counter() - began
    run.close()
    first, second = (
        json.loads(line)["seconds"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    )
    assert first >= pause and 0 < second < pause
    assert first + second <= wall


def test_the_training_loop_reads_the_steps_metrics_once_an_epoch_not_after_every_step(
    experiment, straight, tmp_path, monkeypatch
):
    """Reading a step's loss waits for the step, and the next step would be dispatched only then: the engine of
    ``jaxrec train`` keeps each step's metrics on the device and reads an epoch's together at its end (the progress
    bar's, at most once a second), into the same epoch log."""
    from types import SimpleNamespace

    from jaxrec.experiment import run as run_module

    class Held:  # a step's metric, which the loop must not read on its own
        reads = 0

        def __init__(self, value):
            self.value = value

        def __float__(self):
            Held.reads += 1
            return float(self.value)

        def __bool__(self):
            Held.reads += 1
            return bool(self.value)

    steps, read_together = run_module.run_steps, []

    def held_steps(*args, **kwargs):
        for state, batch, metrics in steps(*args, **kwargs):
            yield state, batch, {name: Held(value) for name, value in metrics.items()}

    def device_get(pending):
        read_together.append(len(pending))
        return jax.device_get([{name: held.value for name, held in m.items()} for m in pending])

    monkeypatch.setattr(run_module, "run_steps", held_steps)
    monkeypatch.setattr(run_module, "jax", SimpleNamespace(device_get=device_get))
    run = cli.TrainingRun(experiment, tmp_path / "run")
    per_epoch = experiment.steps_per_epoch
    run.train(run.start(resume=False), per_epoch + 2, progress=False)
    run.close()
    assert Held.reads == 0 and read_together == [per_epoch, 2]  # each epoch's end, then the last checkpoint's
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    expected = json.loads((straight[1] / "metrics.jsonl").read_text().splitlines()[0])
    assert {**first, "seconds": 0} == {**expected, "seconds": 0}
    # a host that runs ahead of the device is held back: at most so many steps wait, the newest left in flight
    monkeypatch.setattr(run_module, "_MAX_PENDING_STEPS", 2)
    read_together.clear()
    run = cli.TrainingRun(experiment, tmp_path / "bounded")
    run.train(run.start(resume=False), per_epoch, progress=False)
    run.close()
    assert per_epoch > 2 and read_together[:-1] == [1] * (per_epoch - 2) and read_together[-1] == 2
    line = json.loads((tmp_path / "bounded" / "metrics.jsonl").read_text().splitlines()[0])
    assert {**line, "seconds": 0} == {**expected, "seconds": 0}


# ----------------------------------------------------------------------------------------------------------------
# 5. non-finite steps


def test_poisoned_task_is_skipped_and_counted(experiment, tmp_path, monkeypatch):
    poison(monkeypatch, experiment, at_step=1)
    run = cli.TrainingRun(experiment, tmp_path / "run", nonfinite="skip")
    per_epoch = experiment.steps_per_epoch
    state, _ = run.train(run.start(resume=False), per_epoch, progress=False)
    run.close()
    assert int(state.skipped) == 1 and int(state.step) == per_epoch
    assert all(np.isfinite(x).all() for x in leaves(state.params))
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["skipped"] == 1 and line["skipped_in_epoch"] == 1 and np.isfinite(line["loss"])


def test_poisoned_task_raises_naming_its_users(experiment, tmp_path, monkeypatch):
    poison(monkeypatch, experiment, at_step=1)
    run = cli.TrainingRun(experiment, tmp_path / "run", nonfinite="raise")
    with pytest.raises(NonFiniteError) as info:
        run.train(run.start(resume=False), 3, progress=False)
    run.close()
    assert info.value.step == 1 and info.value.users
    assert set(info.value.users) <= set(experiment.dataset.user_ids.tolist())
    assert "users" in str(info.value)


def test_the_users_of_a_poisoned_batch_are_named_with_text_ids_too():
    """A log of text ids holds them as Python strings in an object array: naming them crashed on ``.item()``."""
    from types import SimpleNamespace

    from jaxrec.experiment.run import _raw_users

    for ids, expected in [
        (np.array(["user7", "sku-1"], dtype=object), ["sku-1", "user7"]),
        (np.array([70, 10]), [10, 70]),
    ]:
        named = _raw_users(SimpleNamespace(dataset=SimpleNamespace(user_ids=ids)), np.array([1, 0, -1]))
        assert named == expected and all(type(u) in (str, int) for u in named)


def test_cli_reports_a_poisoned_task(ratings_file, tmp_path, monkeypatch, capsys):
    original = Experiment.batches

    def poisoned(self, start_step=0):
        for step, batch in enumerate(original(self, start_step), start=start_step):
            if step == 1:
                batch.query["rating"][0, 0] = np.nan
            yield batch

    monkeypatch.setattr(Experiment, "batches", poisoned)
    flags = ["train", "--data", str(ratings_file), *TINY_FLAGS, "--steps", "3", "--no-eval"]
    assert cli.main([*flags, "--out", str(tmp_path / "raise"), "--nonfinite", "raise"]) == 1
    err = capsys.readouterr().err
    assert "jaxrec: error: non-finite meta-loss" in err and "Traceback" not in err
    assert cli.main([*flags, "--out", str(tmp_path / "skip")]) == 0  # skipped, and how to learn whose it was
    assert "(1 non-finite step(s) skipped (--nonfinite raise stops at the first, naming" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------------------
# 4. SIGINT / SIGTERM during `jaxrec train`


def _wait_for_first_epoch(proc: subprocess.Popen, log: Path, timeout: float = 150.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and log.read_text().strip():
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.communicate()}")
        time.sleep(0.2)
    raise AssertionError("no epoch finished in time")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_exits_cleanly_and_resume_goes_on(ratings_file, tmp_path, signum, capsys):
    out = tmp_path / "run"
    # side tables, which a resumed run also reads again
    items, users = tmp_path / "items.csv", tmp_path / "users.csv"
    items.write_text("item,genre\n" + "".join(f"{i},g{i % 3}\n" for i in range(100, 140)))
    users.write_text("user,region\n" + "".join(f"{u},r{u % 4}\n" for u in range(1, 61)))
    command = [
        sys.executable,
        "-m",
        "jaxrec",
        "train",
        "--data",
        str(ratings_file),
        "--item-features",
        str(items),
        "--user-features",
        str(users),
        *TINY_FLAGS,
        "--epochs",
        "500",
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        _wait_for_first_epoch(proc, out / "metrics.jsonl")
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, stderr
    assert f"{signal.Signals(signum).name} received: saved checkpoint" in stderr
    assert "Traceback" not in stderr
    saved = read_metadata(out)["step"]
    assert saved >= 1
    # the command it prints goes on as printed (it left out --data, then the side tables, which such a run needs)
    hint = shlex.split(stderr.split("continue with: ")[1].splitlines()[0])
    assert hint[:2] == ["jaxrec", "train"] and hint[hint.index("--data") + 1] == str(ratings_file)
    assert hint[hint.index("--item-features") + 1] == str(items.resolve())
    assert hint[hint.index("--user-features") + 1] == str(users.resolve())
    assert cli.main([*hint[1:], "--steps", str(saved + 2), "--no-eval"]) == 0
    assert read_metadata(out)["step"] == saved + 2
    capsys.readouterr()
    assert cli.main([*hint[1:], "--steps", "1", "--no-eval"]) == 0  # already past it: said, not a contradiction
    assert f"the run is at step {saved + 2}, at or past the 1 steps asked for" in capsys.readouterr().err
    assert read_metadata(out)["step"] == saved + 2


def test_the_resume_command_names_every_file_and_folder_the_run_read(tmp_path):
    """A run of a MovieLens folder (``--data-dir``) or of side tables resumed as printed failed: a recorded path is
    never opened, so each must be named again."""
    from jaxrec.experiment.config import ExperimentConfig

    items = tmp_path / "my items.csv"
    config = ExperimentConfig.make(dataset="ml-100k", data_dir=str(tmp_path), item_features=str(items), devices=2)
    again = cli._resume_command(tmp_path / "run", config)
    assert again == ["jaxrec", "train", "--out", str(tmp_path / "run"), "--resume", "--data-dir", str(tmp_path),
                     "--item-features", str(items), "--devices", "2"]  # fmt: skip
    log = ExperimentConfig.make(data=str(tmp_path / "log.csv"), user_features=str(tmp_path / "u.csv"))
    assert cli._resume_command(tmp_path, log)[5:] == ["--data", str(tmp_path / "log.csv"), "--user-features",
                                                     str(tmp_path / "u.csv")]  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# 2. exact resume through `jaxrec train --resume`


def test_cli_resume_equals_an_uninterrupted_run(experiment, straight, ratings_file, tmp_path):
    steps = stop_step(experiment)
    flags = ["train", "--data", str(ratings_file), *TINY_FLAGS, "--no-eval", "--out", str(tmp_path / "a")]
    assert cli.main([*flags, "--steps", "3"]) == 0
    resume = [
        "train",
        "--out",
        str(tmp_path / "a"),
        "--resume",
        "--data",
        str(ratings_file),
        "--no-eval",
        "--no-progress",
    ]
    assert cli.main([*resume, "--steps", str(steps)]) == 0
    resumed = load_checkpoint(tmp_path / "a", experiment.init_state())
    assert resumed.step == steps
    assert_bitwise_equal(resumed.state, straight[0])
    assert _log_without_times(tmp_path / "a" / "metrics.jsonl") == _log_without_times(straight[1] / "metrics.jsonl")


def test_a_run_of_more_devices_than_the_cpu_host_shows_says_how_to_split_it():
    """A run trained with --devices 2 and resumed without the flag asked for 2 devices on a host showing 1 and said
    no more; the printed resume command now carries --devices, and the error says how to split the cores."""
    wanted = jax.device_count() + 7
    with pytest.raises(ValueError, match=f"--devices {wanted}.*use_every_core"):
        config_mesh(ExperimentConfig.make(devices=wanted))
