"""Speed of new-user top-N recommendation over the whole catalogue; prints one JSON document.

    python benchmarks/topn_speed.py                      # V = 1e4, 1e5, 1e6 items, 256 users, top 100
    python benchmarks/topn_speed.py --sizes 100000 --chunks 16384 --rounds 3
    python benchmarks/topn_speed.py --loss als_exact   # the recipe's exact ALS fold-in, NumPy adapting too

For each catalogue size ``V`` and a batch of ``U`` new users, side by side in one run:

* **jaxrec**: the compiled :func:`jaxrec.evaluation.topn.dot_ranker` of a :class:`jaxrec.models.TwoTower`: each
  user's support of 10 positives with 20 uniformly sampled negatives each, one Newton step
  (:func:`jaxrec.newton`) on ``user_vector`` under the logQ-corrected sampled softmax
  (:func:`jaxrec.core.ranking.ranking_loss`; ``--loss als_exact``: the exact ALS loss, whose Newton step is the
  fold-in, the negatives unread), then the item tower chunk by chunk, one ``[U, d+1] x [d+1, C]``
  product per chunk and a running top ``k`` (:func:`~jaxrec.evaluation.topn.streaming_topk`), the support items
  excluded. Timed per chunk size ``C`` in ``--chunks`` (each reported; the effective chunk is ``min(C, V)``, and
  two sizes with the same effective chunk share one executable). ``adapt`` times the adaptation alone (the user
  vectors) and each chunk's ``scoring_only`` the rest of ``dot_ranker`` (item tower, products, streaming top
  ``k``) on those user vectors, to split the total.
* **numpy**: the same scoring and top ``k`` in plain NumPy, on the user vectors of the jaxrec run and the item
  vectors ``Q [V, d+1]`` of the same item tower (computed once, not timed): ``S = P Q^T`` in one go, the support
  items set to ``-inf``, ``np.argpartition`` for the top ``k`` then a sort of those ``k``. Its lists are checked
  against jaxrec's (set overlap per user, required >= 99% on average; ties aside they are equal).
* **numpy_full** (``--loss als_exact``, the ``twotower-als`` recipe's inner loop: the exact ALS fold-in, the
  catalogue's Gram matrix formed once as a recommender forms it, not timed): the adaptation too in plain NumPy,
  each user's ``d x d`` system solved at once by :func:`jaxrec.experiment.export.fold_in_users` (the closed form
  ``jaxrec export``'s arrays are used with; ``np.linalg.solve`` over the batch), then the same scoring and top
  ``k``. Its lists are checked against jaxrec's as above.
* **floor**: one jitted float32 ``jnp.dot`` of the same size, ``[U, d+1] x [d+1, V]`` (no item tower, no
  top-k), and its GFLOP/s. Its ``[U, V]`` output is written out (1 GiB at a million items), which on CPU costs
  as much as the arithmetic, so ``floor_streamed`` also times the same product in chunks (each ``C``; the best
  kept), each chunk reduced to its row maximum: the arithmetic without the full output.
* **memory**: ``memory_analysis()`` of each compiled function: ``temp_bytes`` (working memory),
  ``argument_bytes`` (the parameters, among them the item table that grows with ``V``, and the chunked
  catalogue), ``output_bytes``; ``peak_bytes`` is their sum. ``item_table_bytes`` and ``catalogue_bytes`` are
  the parts of the arguments that grow linearly with ``V``; the scoring's temp is ``O(U (C + k))`` whatever
  ``V``, the adaptation's ``O(U P R (d+1))`` (``P`` adapted parameters, ``R`` support rows with their negatives:
  the Newton step's Hessian-vector products carry the user-vector tangent broadcast to every row).

Every timed function is compiled first (``lower(...).compile()``), called once to warm up, then ``--rounds``
times, each blocked on its result; medians, minima and every round (wall ms, and ``cpu_ms``: this process's CPU
time, which tells a busy shared machine apart) are in the JSON. ``users_per_s = U / median``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxrec import models  # noqa: E402
from jaxrec.core.batch import TaskBatch  # noqa: E402
from jaxrec.core.features import FeatureSpec  # noqa: E402
from jaxrec.core.inner import InnerLoop  # noqa: E402
from jaxrec.core.newton import newton  # noqa: E402
from jaxrec.core.ranking import ranking_loss  # noqa: E402
from jaxrec.evaluation.topn import _adapted, _clean_users, dot_ranker, streaming_topk  # noqa: E402
from jaxrec.experiment.export import fold_in_users  # noqa: E402
from jaxrec.experiment.protocol import exact_als_loss_of_gram  # noqa: E402

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "topn_speed.json")
SUPPORT = 10  # positive rows per new user
NEGATIVES = 20  # sampled negatives per positive row


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="catalogue sizes V")
    p.add_argument("--users", type=int, default=256, help="new users per batch U")
    p.add_argument("--k", type=int, default=100, help="list length")
    p.add_argument("--embed", type=int, default=64, help="user / item vector width d")
    p.add_argument("--rounds", type=int, default=5, help="timed calls per measurement (after one warm-up)")
    p.add_argument("--chunks", type=int, nargs="+", default=[4096, 16384, 65536], help="catalogue chunk sizes C")
    p.add_argument("--inner-lr", type=float, default=1.0, help="prior variance of the Newton step")
    p.add_argument(
        "--loss",
        choices=("softmax", "als_exact"),
        default="softmax",
        help="the inner loss: sampled softmax, or the exact ALS fold-in (the twotower-als recipe's; NumPy adapts too)",
    )
    p.add_argument("--confidence", type=float, default=1.0, help="als_exact: an interaction's extra confidence c")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=DEFAULT_OUT, help="where the JSON is written ('' or '-': nowhere)")
    return p.parse_args(argv)


def log(msg: str) -> None:
    print(f"[topn_speed] {msg}", file=sys.stderr, flush=True)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn, args: tuple, rounds: int, warmup: bool = True) -> tuple[list[tuple[float, float]], object]:
    """``rounds`` timed calls of ``fn(*args)`` after one warm-up, each blocked on its result:
    ``([(wall s, process CPU s)], last output)``."""
    out = jax.block_until_ready(fn(*args)) if warmup else None
    seconds = []
    for _ in range(rounds):
        c, t = cpu_seconds(), time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        seconds.append((time.perf_counter() - t, cpu_seconds() - c))
    return seconds, out


def summary(seconds: list[tuple[float, float]], users: int) -> dict:
    wall = [w for w, _ in seconds]
    median = float(np.median(wall))
    return {
        "median_ms": 1e3 * median,
        "min_ms": 1e3 * min(wall),
        "rounds_ms": [1e3 * w for w in wall],
        "cpu_ms": [1e3 * c for _, c in seconds],
        "users_per_s": users / median,
    }


def memory(compiled) -> dict:
    try:
        mem = compiled.memory_analysis()
        out = {
            "temp_bytes": int(mem.temp_size_in_bytes),
            "argument_bytes": int(mem.argument_size_in_bytes),
            "output_bytes": int(mem.output_size_in_bytes),
            "alias_bytes": int(getattr(mem, "alias_size_in_bytes", 0)),
        }
        out["peak_bytes"] = out["temp_bytes"] + out["argument_bytes"] + out["output_bytes"]
        out["working_bytes"] = out["temp_bytes"] + out["output_bytes"]
        return out
    except Exception as err:  # noqa: BLE001 - a backend without memory analysis
        return {"peak_bytes": None, "memory_error": repr(err)}


# ----------------------------------------------------------------------------------------------------------------
# the workload


def distinct_items(rng: np.random.Generator, n_items: int, users: int, per_user: int) -> np.ndarray:
    """``[users, per_user]`` item codes in ``[0, n_items)``, distinct within each user."""
    codes = rng.integers(0, n_items, (users, per_user))
    for u in range(users):
        while len(np.unique(codes[u])) < per_user:
            codes[u] = rng.choice(n_items, per_user, replace=False)
    return codes.astype(np.int32)


def workload(n_items: int, args: argparse.Namespace):
    """``(model, inner, state, batch, exclude, q, gram)`` for ``n_items`` items (``q``: the item vectors ``[V, d+1]``
    on the host, for the NumPy references and the floor; ``gram``: the exact ALS loss's ``[d+1, d+1]`` Gram matrix of
    them, None for the softmax) (item code ``c`` has model id ``c + 1``, id 0 being the OOV slot, which padding
    entries of the catalogue map to)."""
    spec = FeatureSpec(categorical={"user": 2, "item": n_items + 1}, target="label", rating_range=None)
    model = models.TwoTower(spec, embed=args.embed)
    params = models.init_params(model, spec, jax.random.PRNGKey(args.seed))
    ids = jnp.arange(1, n_items + 1, dtype=jnp.int32)
    vectors = jax.jit(lambda p, i: model.apply(p, {"item": i}, method=model.item_vectors))(params, ids)
    q, gram = np.asarray(vectors), None
    if args.loss == "als_exact":  # the catalogue's Gram matrix, formed once for every user (as fixed_item_side does)
        gram = jax.device_put(np.asarray(vectors.T @ vectors))
        loss = exact_als_loss_of_gram(model, lambda _: gram, confidence=args.confidence)
    else:
        loss = ranking_loss(model.apply, "softmax")
    inner = InnerLoop(loss, steps=1, solver=newton(), adapt_filter=model.default_adapt_filter)
    rng = np.random.default_rng([args.seed, n_items])
    u = args.users
    positives = distinct_items(rng, n_items, u, SUPPORT)
    negatives = rng.integers(0, n_items, (u, SUPPORT, NEGATIVES)).astype(np.int32)
    logq = np.float32(-math.log(n_items))  # uniform sampler: the correction is a constant
    support = {
        "user": np.ones((u, SUPPORT), np.int32),
        "item": positives + 1,
        "label": np.ones((u, SUPPORT), np.float32),
        "neg_item": negatives + 1,
        "neg_mask": np.ones((u, SUPPORT, NEGATIVES), bool),
        "logq": np.full((u, SUPPORT), logq, np.float32),
        "neg_logq": np.full((u, SUPPORT, NEGATIVES), logq, np.float32),
    }
    mask = np.ones((u, SUPPORT), bool)
    batch = TaskBatch(support, support, mask, mask, np.arange(u, dtype=np.int32))
    state = (params, jnp.float32(args.inner_lr))
    del vectors
    return model, inner, jax.device_put(state), jax.device_put(batch), jax.device_put(positives), q, gram


def catalogue(n_items: int, chunk: int) -> tuple[dict, np.ndarray]:
    """The chunked catalogue ``({"item": ids [chunks, C]}, codes [chunks, C])``, ``C = min(chunk, V)``,
    codes ``-1`` (id 0) on the last chunk's padding."""
    chunk = min(int(chunk), n_items)
    n_chunks = -(-n_items // chunk)
    codes = np.full(n_chunks * chunk, -1, np.int32)
    codes[:n_items] = np.arange(n_items, dtype=np.int32)
    codes = codes.reshape(n_chunks, chunk)
    return {"item": np.where(codes >= 0, codes + 1, 0).astype(np.int32)}, codes


def item_table_bytes(params) -> int:
    """The bytes of the parameters with a leading axis of the item vocabulary (embedding and bias tables)."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return int(sum(x.nbytes for path, x in flat if "item" in jax.tree_util.keystr(path) and x.ndim == 2))


# ----------------------------------------------------------------------------------------------------------------
# the NumPy reference


def numpy_topk(users: np.ndarray, items: np.ndarray, exclude: np.ndarray, k: int) -> np.ndarray:
    """The top ``k`` item codes of ``users [U, d+1] @ items[V, d+1]^T``, ``exclude [U, E]`` at -inf, best first."""
    scores = users @ items.T
    scores[np.arange(len(users))[:, None], exclude] = -np.inf
    top = np.argpartition(scores, -k, axis=1)[:, -k:]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1).astype(np.int32)


def overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per user, the fraction of ``a``'s list also in ``b``'s."""
    return np.array([len(np.intersect1d(x, y)) / len(x) for x, y in zip(a, b, strict=True)])


# ----------------------------------------------------------------------------------------------------------------


def one_size(n_items: int, args: argparse.Namespace) -> dict:
    u, k, rounds = args.users, args.k, args.rounds
    model, inner, state, batch, exclude, q, gram = workload(n_items, args)
    params = state[0]
    record: dict = {"n_items": n_items, "users": u, "k": k, "embed": args.embed, "loadavg_start": os.getloadavg()}
    record["item_table_bytes"] = item_table_bytes(params)

    # the adaptation alone: the user vectors [U, d+1] (as dot_ranker computes them), the NumPy reference's input
    @jax.jit
    def user_vectors(state, batch):
        phi = _adapted(state, batch, inner)
        users = _clean_users(batch)
        return jax.vmap(lambda p, r: model.apply(p, r, method=model.user_vectors))(phi, users)

    compiled = user_vectors.lower(state, batch).compile()
    seconds, vectors = timed(compiled, (state, batch), rounds)
    record["adapt"] = summary(seconds, u)
    record["adapt"]["memory"] = memory(compiled)
    log(f"V={n_items}: adapt {record['adapt']['median_ms']:.1f} ms")

    # the scoring alone: dot_ranker's body (item tower per chunk, product, streaming top k) on given user vectors
    @jax.jit
    def score(params, vectors, exclude, rows, codes):
        def chunk_scores(item_rows):
            return vectors @ model.apply(params, item_rows, method=model.item_vectors).T

        return streaming_topk(chunk_scores, rows, codes, exclude, k)[1]

    # jaxrec: adapt + full-catalogue top k, per chunk size
    rank = dot_ranker(model, inner, k)
    lists = {}
    record["jaxrec"] = []
    for chunk in args.chunks:
        rows, codes = jax.device_put(catalogue(n_items, chunk))
        t = time.perf_counter()
        compiled = rank.lower(state, batch, exclude, rows, codes).compile()
        compile_s = time.perf_counter() - t
        seconds, items = timed(compiled, (state, batch, exclude, rows, codes), rounds)
        lists[chunk] = np.asarray(items)
        entry = {"chunk": chunk, "effective_chunk": int(codes.shape[1]), "n_chunks": int(codes.shape[0])}
        entry.update(summary(seconds, u), compile_s=compile_s, memory=memory(compiled))
        entry["catalogue_bytes"] = int(rows["item"].nbytes + codes.nbytes)
        scoring = score.lower(params, vectors, exclude, rows, codes).compile()
        seconds, scored = timed(scoring, (params, vectors, exclude, rows, codes), rounds)
        entry["scoring_only"] = summary(seconds, u)
        entry["scoring_only"]["memory"] = memory(scoring)
        entry["scoring_only"]["overlap_with_full"] = float(overlap(lists[chunk], np.asarray(scored)).mean())
        record["jaxrec"].append(entry)
        del rows, codes, compiled, scoring
        log(
            f"V={n_items} C={chunk}: jaxrec {entry['median_ms']:.1f} ms (scoring alone "
            f"{entry['scoring_only']['median_ms']:.1f} ms), temp {entry['memory'].get('temp_bytes')} B"
        )
    best = min(record["jaxrec"], key=lambda e: e["median_ms"])
    record["jaxrec_best"] = {"chunk": best["chunk"], "median_ms": best["median_ms"], "users_per_s": best["users_per_s"]}
    first = lists[args.chunks[0]]
    record["jaxrec_lists_overlap_across_chunks"] = {
        str(c): float(overlap(first, lists[c]).mean()) for c in args.chunks[1:]
    }

    p_np, excl = np.asarray(vectors), np.asarray(exclude)

    # NumPy: scoring + exclusion + top k, in one go
    numpy_topk(p_np, q, excl, k)  # warm-up
    seconds, np_items = timed(lambda: numpy_topk(p_np, q, excl, k), (), rounds, warmup=False)
    record["numpy"] = summary(seconds, u)
    record["numpy"]["mode"] = "one go: scores [U, V], argpartition over V, sort of the top k"
    record["numpy"]["scores_bytes"] = 4 * u * n_items
    agree = overlap(lists[best["chunk"]], np_items)
    record["numpy"]["overlap_with_jaxrec_mean"] = float(agree.mean())
    record["numpy"]["overlap_with_jaxrec_min"] = float(agree.min())
    record["numpy"]["identical_lists_fraction"] = float(np.mean(np.all(lists[best["chunk"]] == np_items, axis=1)))
    if agree.mean() < 0.99:
        raise RuntimeError(f"V={n_items}: NumPy and jaxrec top-{k} lists overlap {agree.mean():.4f} < 0.99")
    log(f"V={n_items}: numpy {record['numpy']['median_ms']:.1f} ms, overlap {agree.mean():.4f}")

    if gram is not None:  # NumPy adapting too: the fold-in's closed form, then the same top k
        side = {  # the arrays jaxrec export writes, for this model
            "item_vectors": q,
            "gram": np.asarray(gram),
            "prior_mean": np.asarray(params["params"]["user_vector"]),
            "ridge": np.full(args.embed, 1.0 / (2.0 * args.inner_lr), np.float32),
            "confidence": np.asarray(args.confidence),
            "recency": np.asarray(0.0),
        }
        ones = np.ones(excl.shape, np.float32)

        def numpy_fold_in():
            return fold_in_users(side, excl, ones, ones > 0)

        def numpy_full():
            return numpy_topk(numpy_fold_in(), q, excl, k)

        numpy_full()  # warm-up
        seconds, full_items = timed(numpy_full, (), rounds, warmup=False)
        record["numpy_full"] = summary(seconds, u)
        record["numpy_full"]["mode"] = "fold-in (batched np.linalg.solve) + scores [U, V] + argpartition"
        fitted = numpy_fold_in()  # the same user vectors as jaxrec's Newton step
        record["numpy_full"]["user_vectors_max_abs_diff"] = float(np.abs(fitted - p_np).max())
        agree = overlap(lists[best["chunk"]], full_items)
        record["numpy_full"]["overlap_with_jaxrec_mean"] = float(agree.mean())
        record["numpy_full"]["overlap_with_jaxrec_min"] = float(agree.min())
        if agree.mean() < 0.99:
            raise RuntimeError(f"V={n_items}: NumPy's fold-in lists overlap jaxrec's {agree.mean():.4f} < 0.99")
        log(f"V={n_items}: numpy adapt + top-k {record['numpy_full']['median_ms']:.1f} ms, overlap {agree.mean():.4f}")

    # the floor: one [U, d+1] x [d+1, V] float32 product (its [U, V] output written out); and the same product
    # streamed in chunks of each C, each chunk reduced to its row max (the whole product never stored)
    flops = 2.0 * u * (args.embed + 1) * n_items
    a, b = jax.device_put((p_np, np.ascontiguousarray(q.T)))
    compiled = jax.jit(jnp.dot).lower(a, b).compile()
    seconds, _ = timed(compiled, (a, b), rounds)
    record["floor"] = summary(seconds, u)
    record["floor"].update(flops=flops, gflop_per_s=flops / (record["floor"]["median_ms"] / 1e3) / 1e9)
    del b, _

    def streamed(a, blocks):
        def step(top, block):
            return jnp.maximum(top, jnp.max(a @ block, axis=1)), None

        return jax.lax.scan(step, jnp.full((a.shape[0],), -jnp.inf, a.dtype), blocks)[0]

    record["floor_streamed_per_chunk"] = []
    for chunk in sorted({min(c, n_items) for c in args.chunks}):
        n_chunks = -(-n_items // chunk)
        padded = np.zeros((args.embed + 1, n_chunks * chunk), np.float32)
        padded[:, :n_items] = q.T
        blocks = jax.device_put(np.ascontiguousarray(padded.reshape(-1, n_chunks, chunk).transpose(1, 0, 2)))
        del padded
        compiled = jax.jit(streamed).lower(a, blocks).compile()
        seconds, _ = timed(compiled, (a, blocks), rounds)
        entry = summary(seconds, u)
        entry.update(chunk=chunk, gflop_per_s=flops / (entry["median_ms"] / 1e3) / 1e9)
        record["floor_streamed_per_chunk"].append(entry)
        del blocks, _
    record["floor_streamed"] = dict(min(record["floor_streamed_per_chunk"], key=lambda e: e["median_ms"]), flops=flops)
    del a
    log(
        f"V={n_items}: floor {record['floor']['median_ms']:.1f} ms ({record['floor']['gflop_per_s']:.1f} GFLOP/s), "
        f"streamed {record['floor_streamed']['median_ms']:.1f} ms (C={record['floor_streamed']['chunk']})"
    )

    floor_ms, streamed_ms = record["floor"]["median_ms"], record["floor_streamed"]["median_ms"]
    scoring = min(record["jaxrec"], key=lambda e: e["scoring_only"]["median_ms"])
    record["jaxrec_scoring_best"] = {"chunk": scoring["chunk"], "median_ms": scoring["scoring_only"]["median_ms"]}
    for entry in record["jaxrec"]:
        entry["ratio_to_floor"] = entry["median_ms"] / floor_ms
    record["ratios"] = {
        "jaxrec_best_over_floor": best["median_ms"] / floor_ms,
        "jaxrec_best_over_floor_streamed": best["median_ms"] / streamed_ms,
        "jaxrec_scoring_over_floor": scoring["scoring_only"]["median_ms"] / floor_ms,
        "jaxrec_scoring_over_floor_streamed": scoring["scoring_only"]["median_ms"] / streamed_ms,
        "adapt_fraction_of_jaxrec": record["adapt"]["median_ms"] / best["median_ms"],
        "numpy_over_jaxrec_best": record["numpy"]["median_ms"] / best["median_ms"],
        "numpy_over_jaxrec_scoring": record["numpy"]["median_ms"] / scoring["scoring_only"]["median_ms"],
        "numpy_over_floor": record["numpy"]["median_ms"] / floor_ms,
    }
    if "numpy_full" in record:
        record["ratios"]["numpy_full_over_jaxrec_best"] = record["numpy_full"]["median_ms"] / best["median_ms"]
    record["loadavg_end"] = os.getloadavg()
    return record


def machine() -> dict:
    model_name = None
    try:
        with open("/proc/cpuinfo") as f:
            model_name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        pass
    device = jax.devices()[0]
    return {
        "cores": common.threads(),
        "cpu": model_name or platform.processor(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "jaxlib": getattr(jax.lib, "__version__", None),
        "numpy": np.__version__,
        "backend": jax.default_backend(),
        "device": str(device.device_kind),
        "devices": jax.device_count(),
        "loadavg": os.getloadavg(),
        "note": "wall times; cpu_ms is this process's CPU time per round (other processes may share the cores)",
    }


def table(results: list[dict]) -> list[dict]:
    """One compact row per size: medians (ms), ratios, memory (MiB)."""
    mib = lambda b: None if b is None else b / 2**20  # noqa: E731
    rows = []
    for r in results:
        best = next(e for e in r["jaxrec"] if e["chunk"] == r["jaxrec_best"]["chunk"])
        row = {"n_items": r["n_items"], "adapt_ms": r["adapt"]["median_ms"]}
        for e in r["jaxrec"]:
            row[f"jaxrec_ms_C{e['chunk']}"] = e["median_ms"]
            row[f"scoring_ms_C{e['chunk']}"] = e["scoring_only"]["median_ms"]
        row.update(
            jaxrec_best_chunk=r["jaxrec_best"]["chunk"],
            jaxrec_ms=r["jaxrec_best"]["median_ms"],
            jaxrec_scoring_best_chunk=r["jaxrec_scoring_best"]["chunk"],
            jaxrec_scoring_ms=r["jaxrec_scoring_best"]["median_ms"],
            numpy_ms=r["numpy"]["median_ms"],
            floor_ms=r["floor"]["median_ms"],
            floor_gflop_per_s=r["floor"]["gflop_per_s"],
            floor_streamed_ms=r["floor_streamed"]["median_ms"],
            floor_streamed_chunk=r["floor_streamed"]["chunk"],
            floor_streamed_gflop_per_s=r["floor_streamed"]["gflop_per_s"],
            adapt_fraction=r["ratios"]["adapt_fraction_of_jaxrec"],
            jaxrec_over_floor=r["ratios"]["jaxrec_best_over_floor"],
            numpy_over_jaxrec=r["ratios"]["numpy_over_jaxrec_best"],
            numpy_over_jaxrec_scoring=r["ratios"]["numpy_over_jaxrec_scoring"],
            users_per_s=r["jaxrec_best"]["users_per_s"],
            overlap=r["numpy"]["overlap_with_jaxrec_mean"],
        )
        if "numpy_full" in r:
            row.update(
                numpy_full_ms=r["numpy_full"]["median_ms"],
                numpy_full_over_jaxrec=r["ratios"]["numpy_full_over_jaxrec_best"],
                numpy_full_overlap=r["numpy_full"]["overlap_with_jaxrec_mean"],
            )
        for e in r["jaxrec"]:
            row[f"temp_MiB_C{e['chunk']}"] = mib(e["memory"].get("temp_bytes"))
            row[f"scoring_temp_MiB_C{e['chunk']}"] = mib(e["scoring_only"]["memory"].get("temp_bytes"))
        row.update(
            adapt_temp_MiB=mib(r["adapt"]["memory"].get("temp_bytes")),
            peak_MiB=mib(best["memory"].get("peak_bytes")),
            item_table_MiB=mib(r["item_table_bytes"]),
            catalogue_MiB=mib(best["catalogue_bytes"]),
            numpy_scores_MiB=mib(r["numpy"]["scores_bytes"]),
        )
        rows.append(row)
    return rows


def main(argv=None) -> dict:
    args = parse(argv)
    t0 = time.perf_counter()
    results = [one_size(v, args) for v in args.sizes]
    record = {
        "benchmark": "topn_speed",
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "workload": {
            "support_positives": SUPPORT,
            "negatives_per_positive": NEGATIVES,
            "loss": "softmax (logQ)" if args.loss == "softmax" else f"exact ALS fold-in (c = {args.confidence:g})",
            "inner": "1 Newton step on user_vector",
            "model": "TwoTower(hidden=())",
        },  # fmt: skip
        "machine": machine(),
        "table": table(results),
        "results": results,
        "wall_s": time.perf_counter() - t0,
    }
    text = json.dumps(record, indent=1)
    print(text, flush=True)
    if args.out and args.out != "-":
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return record


if __name__ == "__main__":
    main()
