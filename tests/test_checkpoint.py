"""jaxrec.experiment.checkpoint: round trip, newest complete step, clear errors, and a save killed (SIGKILL) mid-way."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrec.core.trainer import MetaTrainState
from jaxrec.experiment.checkpoint import (
    CheckpointError,
    CheckpointStore,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)


def make_state(step: int, scale: float = 1.0, shape=(3,)) -> MetaTrainState:
    params = {"params": {"w": jnp.full(shape, scale, jnp.float32), "b": jnp.arange(2, dtype=jnp.float32) * scale}}
    return MetaTrainState(
        step=jnp.array(step, jnp.int32),
        params=params,
        opt_state=optax.adam(1e-3).init(params),
        skipped=jnp.array(step // 2, jnp.int32),
    )


def assert_trees_equal(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_is_bitwise_and_keeps_the_newest(tmp_path):
    with CheckpointStore(tmp_path / "ck", max_to_keep=2) as store:
        for step in (1, 2, 3):
            store.save(make_state(step, scale=step + 0.123), {"config": {"model": "mf"}})
        assert store.steps() == [2, 3]
        assert store.save(make_state(3, scale=99.0), {}) == 3  # an existing step is never overwritten
    restored = load_checkpoint(tmp_path / "ck", make_state(0))
    assert restored.step == 3
    assert isinstance(restored.state, MetaTrainState)
    assert_trees_equal(restored.state, make_state(3, scale=3.123))
    assert restored.meta["format"] == "jaxrec.checkpoint/2"
    assert restored.meta["config"] == {"model": "mf"}
    assert load_checkpoint(tmp_path / "ck", make_state(0), step=2).step == 2
    assert read_metadata(tmp_path / "ck")["step"] == 3


def test_a_step_saved_without_its_manifest_is_never_restored_and_the_next_save_removes_it(tmp_path):
    # a save stopped between orbax's rename and the manifest: its files were never recorded, so a damage to them
    # could not be told; the newest recorded step is the one restored, and the unrecorded one goes at the next save
    with CheckpointStore(tmp_path / "ck", max_to_keep=3) as store:
        store.save(make_state(1, scale=1.5), {})
        store.save(make_state(2, scale=2.5), {})
    step_two = tmp_path / "ck" / "2"
    (step_two / "jaxrec_manifest.json").unlink()
    biggest = max((p for p in step_two.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    biggest.write_bytes(b"X" * biggest.stat().st_size)  # damaged, and nothing records it
    restored = load_checkpoint(tmp_path / "ck", make_state(0))
    assert restored.step == 1
    assert_trees_equal(restored.state, make_state(1, scale=1.5))
    with pytest.raises(CheckpointError, match="no checkpoint at step 2"):
        load_checkpoint(tmp_path / "ck", make_state(0), step=2)
    with CheckpointStore(tmp_path / "ck", max_to_keep=3) as store:
        store.save(make_state(3, scale=3.5), {})
        assert store.steps() == [1, 3]
    assert not step_two.exists()


def test_run_folder_and_raw_restore(tmp_path):
    save_checkpoint(tmp_path / "run" / "checkpoints", make_state(5), {"x": 1})
    raw = load_checkpoint(tmp_path / "run")  # a run folder resolves to its checkpoints/
    assert raw.step == 5
    np.testing.assert_array_equal(raw.state["params"]["params"]["w"], np.ones(3, np.float32))


@pytest.mark.parametrize("where", ["missing", "empty", "step"])
def test_missing_checkpoint_is_a_clear_error(tmp_path, where):
    folder = tmp_path / "ck"
    if where != "missing":
        folder.mkdir()
    if where == "step":
        save_checkpoint(folder, make_state(1), {})
    with pytest.raises(CheckpointError, match="no such checkpoint folder|no complete checkpoint|no checkpoint at step"):
        load_checkpoint(folder, make_state(0), step=7 if where == "step" else None)


@pytest.mark.parametrize("template", [make_state(0, shape=(4,)), make_state(0).replace(params={"params": {}})])
def test_incompatible_template_is_a_clear_error(tmp_path, template):
    save_checkpoint(tmp_path / "ck", make_state(1), {"config": {"model": "mf", "algorithm": "maml"}})
    with pytest.raises(CheckpointError, match="incompatible checkpoint"):
        load_checkpoint(tmp_path / "ck", template)


def _state_files(folder: Path) -> list[Path]:
    return [p for p in (folder / "1" / "state").rglob("*") if p.is_file() and p.stat().st_size > 0]


@pytest.mark.parametrize("damage", ["truncate_arrays", "delete_arrays", "garbage_meta", "foreign_format"])
def test_corrupt_checkpoint_is_a_clear_error(tmp_path, damage):
    folder = tmp_path / "ck"
    save_checkpoint(folder, make_state(1), {})
    meta_file = folder / "1" / "meta" / "metadata"
    if damage == "truncate_arrays":
        for path in _state_files(folder):
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    elif damage == "delete_arrays":
        for path in _state_files(folder):
            path.unlink()
    elif damage == "garbage_meta":
        meta_file.write_text("{not json")
    else:
        meta_file.write_text(json.dumps({"format": "something-else/9"}))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(folder, make_state(0))
    assert str(folder) in str(info.value)


KILLED_SAVER = textwrap.dedent(
    """
    import sys, time
    import jax.numpy as jnp, optax
    from orbax.checkpoint._src.path import atomicity
    from jaxrec.experiment.checkpoint import CheckpointStore
    from jaxrec.core.trainer import MetaTrainState

    def state(step):
        params = {"w": jnp.full((256, 256), float(step))}
        opt = optax.adam(1e-3).init(params)
        return MetaTrainState(jnp.array(step, jnp.int32), params, opt, jnp.array(0, jnp.int32))

    store = CheckpointStore(sys.argv[1])
    store.save(state(1), {"note": "complete"})
    original = atomicity.AtomicRenameTemporaryPath.finalize

    async def paused_finalize(self, *args, **kwargs):
        print("PAUSED", flush=True)  # every file of step 2 is written; the commit (rename) has not happened
        time.sleep(600)
        return await original(self, *args, **kwargs)

    atomicity.AtomicRenameTemporaryPath.finalize = paused_finalize
    store.save(state(2), {"note": "killed"})
    """
)


def test_sigkill_in_the_middle_of_a_save_leaves_the_previous_checkpoint(tmp_path):
    folder = tmp_path / "ck"
    script = tmp_path / "saver.py"
    script.write_text(KILLED_SAVER)
    proc = subprocess.Popen([sys.executable, str(script), str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        line = ""
        while time.monotonic() < deadline and "PAUSED" not in line:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
        assert "PAUSED" in line, "the saver never reached the commit of step 2"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    leftovers = [p.name for p in folder.iterdir() if "tmp" in p.name]
    assert leftovers, "expected the uncommitted step-2 folder to be left behind"

    template = MetaTrainState(
        jnp.array(0, jnp.int32),
        {"w": jnp.zeros((256, 256))},
        optax.adam(1e-3).init({"w": jnp.zeros((256, 256))}),
        jnp.array(0, jnp.int32),
    )
    restored = load_checkpoint(folder, template)  # read-only: newest *complete* step
    assert restored.step == 1 and restored.meta["note"] == "complete"
    assert float(restored.state.params["w"][0, 0]) == 1.0

    with CheckpointStore(folder) as store:  # resuming writes step 2 again over the stale temporary folder
        assert store.steps() == [1]
        store.save(restored.state.replace(step=jnp.array(2, jnp.int32)), {"note": "again"})
        assert store.steps() == [1, 2]
    again = load_checkpoint(folder, template)
    assert again.step == 2 and again.meta["note"] == "again"
    assert float(again.state.params["w"][0, 0]) == 1.0
