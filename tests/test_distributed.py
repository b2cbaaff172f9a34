"""Multi-process meta-training: 2 processes on localhost reach the parameters of one process on the same data.

This file is also the worker: ``python tests/test_distributed.py PROCESS_ID PORT OUT`` joins a 2-process run (CPU,
gloo collectives), feeds its half of every batch and saves the final parameters to ``OUT``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

ROOT = Path(__file__).resolve().parents[1]
PROCESSES = 2
LOCAL_DEVICES = 2
TIMEOUT_S = 240
TRAIN = dict(inner_lr=0.1, inner_steps=1, optimizer=optax.adam(1e-2))


def _batches():
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from multidevice import workload

    return workload, workload.batches(3, tasks=6) + workload.batches(1, tasks=5, seed=20)


def worker(process_id: int, port: int, out: str) -> None:
    """One process of the run: initialise, train on the local share of each batch, save the params."""
    import jaxrec
    from jaxrec.scale import distributed

    assert distributed.initialize(f"localhost:{port}", PROCESSES, process_id, timeout_s=60)
    assert jax.process_count() == PROCESSES and jax.device_count() == PROCESSES * LOCAL_DEVICES
    workload, batches = _batches()
    local = [distributed.local_tasks(batch) for batch in batches]
    mesh = distributed.global_mesh()
    _, first = jaxrec.meta_train(workload.init_params(), local[:2], loss_fn=workload.loss_fn, mesh=mesh, **TRAIN)
    # resume from a state held on one local device, as a checkpoint restores it
    device = jax.local_devices()[0]
    state = jax.tree.map(lambda x: jax.device_put(np.asarray(x), device), first["state"])
    params, history = jaxrec.meta_train(None, local[2:], loss_fn=workload.loss_fn, mesh=mesh, state=state, **TRAIN)
    history["loss"] = np.concatenate([first["loss"], history["loss"]])
    flat = {"/".join(map(str, path)): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
    np.savez(out, loss=history["loss"], **flat)
    jax.distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def _launch(tmp_path) -> list[Path]:
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={LOCAL_DEVICES}")
    outs = [tmp_path / f"params{i}.npz" for i in range(PROCESSES)]
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(i), str(port), str(outs[i])],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(PROCESSES)
    ]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=TIMEOUT_S)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for proc, log in zip(procs, logs, strict=True):
        assert proc.returncode == 0, log[-6000:]
    return outs


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    import jaxrec

    outs = _launch(tmp_path)
    workload, batches = _batches()
    params, history = jaxrec.meta_train(workload.init_params(), batches, loss_fn=workload.loss_fn, mesh=None, **TRAIN)
    expected = {"/".join(map(str, p)): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(params)}
    results = [np.load(out) for out in outs]
    for name, value in expected.items():
        np.testing.assert_array_equal(results[0][name], results[1][name])  # every process holds the same params
        np.testing.assert_allclose(results[0][name], value, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(results[0]["loss"], history["loss"], rtol=1e-5, atol=1e-6)


def test_process_share_covers_every_item_once():
    from jaxrec.scale.distributed import process_share

    for n_items in (1, 5, 6, 7, 64):
        for count in (1, 2, 3, 4):
            shares = [process_share(n_items, p, count) for p in range(count)]
            items = [i for share, _ in shares for i in range(n_items)[share]]
            assert items == list(range(n_items))
            assert {size for _, size in shares} == {-(-n_items // count)}


def test_local_tasks_pads_to_a_common_shape():
    from jaxrec.scale.distributed import local_tasks

    _, batches = _batches()
    batch = batches[-1]  # 5 tasks over 2 processes: 3 and 2 (+1 empty)
    first, second = local_tasks(batch, 0, 2), local_tasks(batch, 1, 2)
    assert first.shape == second.shape == (3,) + batch.shape[1:]
    np.testing.assert_array_equal(first.task_id, [0, 1, 2])
    np.testing.assert_array_equal(second.task_id, [3, 4, -1])
    assert not np.asarray(second.query_mask)[-1].any()


def test_initialize_single_process_is_a_no_op(monkeypatch):
    from jaxrec.scale import distributed

    monkeypatch.delenv(distributed.ENV_NUM_PROCESSES, raising=False)
    assert distributed.initialize() is False
    assert distributed.initialize(num_processes=1) is False
    monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "1")
    assert distributed.initialize() is False


def test_initialize_reads_environment(monkeypatch):
    from jaxrec.scale import distributed

    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.config, "update", lambda *args: calls.append(args))
    monkeypatch.setenv(distributed.ENV_COORDINATOR, "host0:1234")
    monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "4")
    monkeypatch.setenv(distributed.ENV_PROCESS_ID, "3")
    assert distributed.initialize() is True
    kwargs = calls[-1]
    assert (kwargs["coordinator_address"], kwargs["num_processes"], kwargs["process_id"]) == ("host0:1234", 4, 3)
    with pytest.raises(ValueError, match="process_id"):
        distributed.initialize(process_id=7)
    monkeypatch.delenv(distributed.ENV_COORDINATOR)
    with pytest.raises(ValueError, match="coordinator"):
        distributed.initialize()


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
