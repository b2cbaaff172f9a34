"""``jaxrec export``: a top-N run's item side and new-user fold-in as plain arrays, ranking as ``recommend`` ranks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cli_support import write_plays

from jaxrec import cli
from jaxrec.core.metasgd import MetaSGDParams
from jaxrec.experiment import ExperimentConfig, export
from jaxrec.experiment.recommend import TopNRecommender
from jaxrec.experiment.reranker_record import ServedReranker
from jaxrec.experiment.run import RunError
from jaxrec.experiment.trained import load_trained


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A twotower-als run with Meta-SGD's per-coordinate rates, user and item features, a recency grid and a hybrid."""
    root = tmp_path_factory.mktemp("export")
    data = write_plays(root / "plays.tsv")
    (root / "users.csv").write_text("user,region\n" + "".join(f"u-{u:03d},r{u % 3}\n" for u in range(120)))
    (root / "items.csv").write_text("item,genre\n" + "".join(f"song-{i:02d},g{i % 4}\n" for i in range(60)))
    out = root / "run"
    argv = ["train", "--data", str(data), "--columns", "user,item,weight,timestamp", "--method", "twotower-als",
            "--algorithm", "metasgd", "--model-kwargs", '{"embed": 8}', "--shots", "3", "--epochs", "1",
            "--topn-baselines", "popular,itemknn", "--hybrid", "itemknn", "--support-recency", "0,2",
            "--user-features", str(root / "users.csv"), "--item-features", str(root / "items.csv"),
            "--bootstrap", "20", "--no-progress", "--out", str(out)]  # fmt: skip
    patch = pytest.MonkeyPatch()
    lines = []
    patch.setattr(cli, "_echo", lambda *parts, err=False: lines.append(" ".join(map(str, parts))))
    try:
        assert cli.main(argv) == 0, lines
    finally:
        patch.undo()
    return out


def perturbed(trained, seed=1):
    """The run with every parameter moved and the rates spread, so that each term of the fold-in counts."""
    params = trained.params
    assert isinstance(params, MetaSGDParams)
    leaves, treedef = jax.tree.flatten(params.params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves) + 1)
    moved = [x + 0.3 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys, strict=False)]
    rates = jax.tree.map(lambda r: r * jnp.exp(0.5 * jax.random.normal(keys[-1], r.shape)), params.inner_lr)
    return dataclasses.replace(
        trained, params=MetaSGDParams(jax.tree.unflatten(treedef, moved), rates), support_recency=2.0
    )


def random_users(n_items, count=12, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        size = int(rng.integers(1, 9))
        yield rng.choice(n_items, size, replace=False), rng.uniform(0.5, 3.0, size).astype(np.float32)


def test_the_numpy_fold_in_is_the_newton_step_in_every_term(run):
    """Meta-SGD's rate per coordinate, a new user's unknown features, item biases and the global offset, the
    weights and the recency weighting: the closed form of the export scores every item as the adapted model does."""
    trained = perturbed(load_trained(run))
    arrays = export.export_arrays(trained, model_alone=True)
    recommender = TopNRecommender(trained, trained.params, hybrid=None)
    assert len(np.unique(arrays["ridge"])) == arrays["ridge"].size  # a ridge per coordinate
    for codes, weights in random_users(len(arrays["item_ids"])):
        expected = recommender.model_scores(codes, weights)
        got = arrays["item_vectors"] @ export.fold_in(arrays, codes, weights)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    # the terms the check covers do move the scores: features (a known region), the order, the weights
    codes, weights = next(random_users(len(arrays["item_ids"]), seed=5))
    base = recommender.model_scores(codes, weights)
    assert np.abs(base - recommender.model_scores(codes, weights, {"region": "r1"})).max() > 1e-3
    assert np.abs(base - recommender.model_scores(codes[::-1], weights[::-1])).max() > 1e-3
    assert np.abs(base - recommender.model_scores(codes, np.ones_like(weights))).max() > 1e-3


def test_a_batch_of_users_of_every_length_is_each_users_fold_in(run):
    arrays = export.export_arrays(perturbed(load_trained(run)), model_alone=True)
    users = list(random_users(len(arrays["item_ids"]), count=6, seed=7))
    size = max(len(codes) for codes, _ in users)
    items, weights = np.full((6, size), -1), np.zeros((6, size), np.float32)
    for u, (codes, w) in enumerate(users):
        items[u, : len(codes)], weights[u, : len(codes)] = codes, w
    batch = export.fold_in_users(arrays, items, weights, items >= 0)
    for u, (codes, w) in enumerate(users):
        np.testing.assert_allclose(batch[u], export.fold_in(arrays, codes, w), rtol=1e-10, atol=1e-12)


def test_export_writes_arrays_whose_lists_are_recommends(run, tmp_path, monkeypatch):
    lines = []
    monkeypatch.setattr(cli, "_echo", lambda *parts, err=False: lines.append(" ".join(map(str, parts))))
    path = tmp_path / "side.npz"
    assert cli.main(["export", "--checkpoint", str(run), "--out", str(path), "--model-alone"]) == 0, lines
    assert "60 item vectors of 8 + 1" in lines[0] and "ranks by maml+itemknn" in lines[1]
    assert "reads user features (region)" in lines[2] and "a new user's without them" in lines[2]
    arrays = export.load_export(path)
    trained = load_trained(run)
    assert list(arrays["item_ids"]) == [str(i) for i in trained.item_ids]
    assert float(arrays["recency"]) == trained.support_recency
    recommender = TopNRecommender(trained, trained.params, hybrid=None)
    for codes, weights in random_users(len(arrays["item_ids"]), seed=3):
        expected, _ = recommender.top_k(codes, weights, 10)
        np.testing.assert_array_equal(export.top_k(arrays, codes, 10, weights), expected)


def test_the_documented_recency_weights_are_the_fold_ins(run):
    """The module docstring's formula, written out here: the item at age ``a`` (0 the newest) weighs
    ``exp(-tau a / (shots - 1))``, scaled so that ``shots`` items weigh ``shots``; every item given is used."""
    arrays = export.export_arrays(perturbed(load_trained(run)), model_alone=True)
    tau, shots = float(arrays["recency"]), int(arrays["shots"])
    assert tau == 2.0 and shots == 3
    scale = shots / np.exp(-tau * np.arange(shots) / (shots - 1)).sum()
    plain = dict(arrays, recency=np.asarray(0.0))
    for codes, weights in random_users(len(arrays["item_ids"]), seed=11):
        age = np.arange(len(codes))[::-1]
        by_hand = weights * scale * np.exp(-tau * age / (shots - 1))
        np.testing.assert_allclose(
            export.fold_in(arrays, codes, weights), export.fold_in(plain, codes, by_hand), rtol=1e-6, atol=1e-9
        )


def test_export_refuses_what_the_arrays_cannot_carry(run, tmp_path, capsys):
    assert cli.main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "x.npz")]) == 1
    assert "ranks by the hybrid maml+itemknn" in capsys.readouterr().err and not (tmp_path / "x.npz").exists()
    trained = load_trained(run)
    for config, message in (
        (trained.config.override(ranking_loss="softmax"), "only the exact ALS fold-in"),
        (ExperimentConfig(), "predicts ratings"),  # a rating run's
    ):
        with pytest.raises(RunError, match=message):
            export.export_arrays(dataclasses.replace(trained, config=config), True)
    # a run that re-ranks its lists (--rerank): the arrays are its recall stage alone, only when asked for
    reranking = dataclasses.replace(
        trained, hybrid=None, reranker=ServedReranker("melu", None, None, None, 50, True, {})
    )
    with pytest.raises(RunError, match="lists its top 50 re-ranked by melu .*--model-alone"):
        export.export_arrays(reranking)
    assert set(export.export_arrays(reranking, model_alone=True)) == set(export.export_arrays(trained, True))
    arrays = export.export_arrays(trained, model_alone=True)
    refused = [([], None, "no items"), ([3, 3], None, "given 2 times"), ([1, 99], None, "not a position in item_ids")]
    for items, weights, message in [*refused, ([1, 2], [1.0, 0.0], "must be > 0")]:
        with pytest.raises(ValueError, match=message):
            export.fold_in(arrays, np.asarray(items, np.int64), weights)
    with pytest.raises(ValueError, match=r"integer positions in item_ids.*enumerate\(arrays\['item_ids'\]\)"):
        export.fold_in(arrays, np.asarray(["song-01"]))
    with pytest.raises(ValueError, match="item song-0. \\(position 3\\) is given 2 times"):
        export.fold_in(arrays, np.asarray([3, 3]))
    unweighted = dict(arrays, weighted=np.asarray(False))
    with pytest.raises(ValueError, match="trained on a log without weights"):
        export.fold_in(unweighted, np.asarray([1, 2]), [2.0, 1.0])
    assert np.array_equal(export.fold_in(unweighted, np.asarray([1, 2])), export.fold_in(arrays, np.asarray([1, 2])))
    listed = export.top_k(arrays, np.asarray([1, 2]), 5)
    assert not {1, 2} & set(listed)
    assert not set(listed[:2]) & set(export.top_k(arrays, np.asarray([1, 2]), 5, exclude=listed[:2]))
    for k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k must be an integer >= 1"):
            export.top_k(arrays, np.asarray([1, 2]), k)


def test_a_file_that_is_not_an_export_is_named_with_what_is_wrong(run, tmp_path, capsys):
    arrays = export.export_arrays(load_trained(run), model_alone=True)
    good = export.save_export(arrays, tmp_path / "good.npz")
    data = good.read_bytes()
    cases = {
        "garbage": (b"hello world" * 10, "not a jaxrec export \\(the .npz archive"),
        "empty": (b"", "not a jaxrec export|damaged"),
        "cut": (data[: len(data) // 2], "a damaged archive"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / f"{name}.npz").write_bytes(content)
        with pytest.raises(RunError, match=f"{name}.npz: .*({message})"):
            export.load_export(tmp_path / f"{name}.npz")
    changed = {
        "format": (dict(arrays, format=np.asarray(2)), "of format 2; this jaxrec reads format 1"),
        "missing": ({k: v for k, v in arrays.items() if k != "recency"}, "not a jaxrec export: no recency"),
        "shape": (
            dict(arrays, item_vectors=arrays["item_vectors"][:, :5]),
            "gram has shape \\(9, 9\\), not \\(5, 5\\)",
        ),
    }
    for name, (content, message) in changed.items():
        np.savez(tmp_path / f"{name}.npz", **content)
        with pytest.raises(RunError, match=f"{name}.npz: .*{message}"):
            export.load_export(tmp_path / f"{name}.npz")
    # the command names the place it cannot write to or read from
    (tmp_path / "afile").write_text("x")
    assert (
        cli.main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "afile" / "x.npz"), "--model-alone"]) == 1
    )
    assert "afile is a file, not a folder" in capsys.readouterr().err
    assert cli.main(["export", "--checkpoint", str(tmp_path / "afile"), "--out", str(tmp_path / "y.npz")]) == 1
    assert "afile: a file, not a run folder" in capsys.readouterr().err


def test_a_run_with_new_items_exports_its_mixed_gram_and_ranks_as_recommend(tmp_path, monkeypatch):
    """Item-id dropout (``--new-item-frac``): the fold-in's Gram matrix mixes each item's vector with and without its
    id, and counts only the trained items: the exported ``gram`` is that one, not ``item_vectors^T item_vectors``."""
    monkeypatch.setattr(cli, "_echo", lambda *parts, err=False: None)
    data = write_plays(tmp_path / "plays.tsv")
    (tmp_path / "items.csv").write_text("item,genre\n" + "".join(f"song-{i:02d},g{i % 4}\n" for i in range(60)))
    out = tmp_path / "run"
    argv = ["train", "--data", str(data), "--columns", "user,item,weight,timestamp", "--method", "twotower-als",
            "--model-kwargs", '{"embed": 8}', "--shots", "3", "--epochs", "1", "--topn-baselines", "popular",
            "--new-item-frac", "0.2", "--item-features", str(tmp_path / "items.csv"), "--bootstrap", "20",
            "--no-progress", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    trained = load_trained(out)
    arrays = export.export_arrays(trained)
    vectors = arrays["item_vectors"]
    assert np.abs(vectors.T @ vectors - arrays["gram"]).max() > 0.01 * np.abs(arrays["gram"]).max()
    recommender = TopNRecommender(trained, trained.params)
    for codes, weights in random_users(len(arrays["item_ids"]), seed=13):
        expected = recommender.model_scores(codes, weights)
        got = vectors @ export.fold_in(arrays, codes, weights)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    pooled = dataclasses.replace(trained, model=trained.model.clone(pool_history=True))
    with pytest.raises(RunError, match="pools the support's history items"):
        export.export_arrays(pooled)


def test_recommend_rerank_on_a_run_that_keeps_no_re_ranker_is_one_clear_error(run, tmp_path, capsys):
    mine = tmp_path / "mine.txt"
    mine.write_text("song-01\nsong-03\n")
    assert cli.main(["recommend", "--checkpoint", str(run), "--ratings", str(mine), "--rerank"]) == 1
    assert (
        "--rerank: the run" in (err := capsys.readouterr().err) and "keeps no re-ranker (train it with --rerank" in err
    )
