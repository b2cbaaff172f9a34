"""``jaxrec export``: a top-N run's item side and new-user fold-in as plain arrays, ranking as ``recommend`` ranks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cli_support import write_plays

from jaxrec import cli
from jaxrec.core.metasgd import MetaSGDParams
from jaxrec.experiment import export
from jaxrec.experiment.recommend import TopNRecommender
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
    arrays = export.load_export(path)
    trained = load_trained(run)
    assert list(arrays["item_ids"]) == [str(i) for i in trained.item_ids]
    assert float(arrays["recency"]) == trained.support_recency
    recommender = TopNRecommender(trained, trained.params, hybrid=None)
    for codes, weights in random_users(len(arrays["item_ids"]), seed=3):
        expected, _ = recommender.top_k(codes, weights, 10)
        np.testing.assert_array_equal(export.top_k(arrays, codes, 10, weights), expected)


def test_export_refuses_what_the_arrays_cannot_carry(run, tmp_path, capsys):
    assert cli.main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "x.npz")]) == 1
    assert "ranks by the hybrid maml+itemknn" in capsys.readouterr().err and not (tmp_path / "x.npz").exists()
    trained = load_trained(run)
    for fields, message in (
        ({"ranking_loss": "softmax"}, "only the exact ALS fold-in"),
        ({"feedback": None, "hybrid": None}, "predicts ratings"),
    ):
        with pytest.raises(RunError, match=message):
            export.export_arrays(dataclasses.replace(trained, config=trained.config.override(**fields)), True)
    arrays = export.export_arrays(trained, model_alone=True)
    refused = [([], None, "an empty support"), ([3, 3], None, "given 2 times"), ([1, 99], None, "not an item code")]
    for items, weights, message in [*refused, ([1, 2], [1.0, 0.0], "must be > 0")]:
        with pytest.raises(ValueError, match=message):
            export.fold_in(arrays, np.asarray(items, np.int64), weights)
    (tmp_path / "bad.npz").write_bytes(b"not an archive")
    with pytest.raises(RunError, match="bad.npz: not a jaxrec export"):
        export.load_export(tmp_path / "bad.npz")
