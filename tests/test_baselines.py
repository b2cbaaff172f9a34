"""Baselines: user mean against pandas, planted biases recovered, fine-tuning with no step = no adaptation."""

import functools

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from jaxrec import data as datasets
from jaxrec.core.losses import mse_loss
from jaxrec.data.tasks import build_tasks, cold_start_split
from jaxrec.evaluation import baselines
from jaxrec.evaluation.predict import collect, meta_predict


@pytest.fixture(scope="module")
def new_user_tasks():
    ds = datasets.load("ml-latest-small")
    split = cold_start_split(ds, seed=0)
    feat = datasets.Featurizer.fit(ds, split.train)
    return build_tasks(split.scenarios["new_user"], feat, "melu", seed=0)


def test_user_mean_equals_pandas_groupby_on_support_rows(new_user_tasks):
    tasks = new_user_tasks
    rows = [
        pd.DataFrame({"user": u, "rating": tasks.row_rating[s : s + n]})
        for u, s, n in zip(tasks.users, tasks.support_start, tasks.support_len, strict=True)
    ]
    expected = pd.concat(rows).groupby("user")["rating"].mean()
    predicted, users = [], []
    for batch in tasks.batches(64, shuffle=False, epochs=1):
        scores = np.asarray(baselines.user_mean(jnp.asarray(3.0), batch))
        real = batch.task_id >= 0
        predicted.append(scores[real, 0])
        users.append(batch.task_id[real])
    got = pd.Series(np.concatenate(predicted), index=np.concatenate(users)).sort_index()
    np.testing.assert_allclose(got.to_numpy(), expected.loc[got.index].to_numpy(), rtol=1e-5)


def test_bias_model_recovers_planted_biases():
    rng = np.random.default_rng(0)
    n_users, n_items = 300, 40
    user_bias = rng.normal(0, 0.5, n_users)
    item_bias = rng.normal(0, 0.7, n_items)
    item_bias -= item_bias.mean()
    users, items = np.meshgrid(np.arange(n_users), np.arange(n_items), indexing="ij")
    keep = rng.random(users.shape) < 0.6
    users, items = users[keep], items[keep]
    ratings = 3.5 + user_bias[users] + item_bias[items] + rng.normal(0, 0.1, len(users))
    mu, b_i, b_u = baselines.fit_bias_model(users, items, ratings, n_users, n_items, item_reg=1.0, user_reg=1.0)
    # mu absorbs the mean user bias; the centred biases are recovered
    np.testing.assert_allclose(b_i - b_i.mean(), item_bias, atol=0.05)
    np.testing.assert_allclose(b_u - b_u.mean(), user_bias - user_bias.mean(), atol=0.1)
    # a test user's offset from a support set: the same closed form
    residual = jnp.asarray([0.5, 0.7, 0.6])
    assert float(baselines.support_user_bias(residual, jnp.ones(3, bool), 1.0)) == pytest.approx(1.8 / 4.0)


def test_item_means_fall_back_to_global_mean():
    table = baselines.fit_item_means(np.array([1, 1, 2]), np.array([4.0, 5.0, 2.0]), 5, mu=3.0)
    np.testing.assert_allclose(table, [3.0, 4.5, 2.0, 3.0, 3.0])


def test_finetune_with_zero_steps_equals_no_adapt(new_user_tasks):
    from jaxrec import models

    model = models.create("melu", new_user_tasks.featurizer.spec, embed=4, hidden=(8,), use_ids=("item",))
    params = models.init_params(model, model.spec, __import__("jax").random.key(0))
    loss_fn = mse_loss(model.apply)
    finetune = functools.partial(
        meta_predict, apply_fn=model.apply, loss_fn=loss_fn, inner_steps=0, adapt_filter=models.adapt_filter("head")
    )
    no_adapt = functools.partial(meta_predict, apply_fn=model.apply, loss_fn=loss_fn, inner_steps=0)
    a = collect(finetune, (params, jnp.asarray(0.3)), new_user_tasks, rating_range=(0.5, 5.0), name="ft0")
    b = collect(no_adapt, (params, jnp.asarray(0.0)), new_user_tasks, rating_range=(0.5, 5.0), name="na")
    np.testing.assert_array_equal(a["abs_sum"], b["abs_sum"])
    np.testing.assert_array_equal(a["user"], b["user"])
