"""Warming up a cold item's id embedding: MWUF and MetaEmb, two ways of replacing the uninformative id embedding
of a new item by one learned across items.

Both sit on one base model, which scores a row from the embeddings of its fields, the item's id embedding
``phi_i`` among them: ``y_hat = f([e(u), e(user features), phi_i, e(item features)])`` (an MLP ``f``, trained as
usual on the warm items, then fixed: ``pretrain=True`` starts meta-training at the supervised model and ``frozen``
keeps its weights, :data:`FROZEN_BASE`). Each item is a task (``tasks_by="item"``); only the task item's
embedding changes.

**MWUF** (Zhu, Xie, Zhuang, Ge, Xiao, Xiong and Zhang, "Learning to Warm Up Cold Item Embeddings for Cold-start
Recommendation with Meta Scaling and Shifting Networks", SIGIR 2021) warms the cold embedding up with two meta
networks,

    phi_warm = tau_scale(i) * phi_cold + tau_shift(i),
    tau_scale(i) = sigmoid(h(e(item features of i))),        tau_shift(i) = g(mean_{u in U(i)} e(u)),

the scaling network ``h`` reading the item's features and the shifting network ``g`` the mean id embedding of the
users who rated it (its support set, encoded into the leaves ``context_users`` and ``context_n`` by
:class:`jaxrec.core.solvers.Amortized`: no inner gradient, the step exact in both orders).

**MetaEmb** (Pan, Li, Ding, Zhou and He, "Warm Up Cold-start Advertisements: Improving CTR Predictions via
Learning to Learn ID Embeddings", SIGIR 2019) generates the embedding from the item's features and warms it up by
one gradient step on the support set ``D_a``:

    phi_0 = G(e(item features of i)),        phi_1 = phi_0 - a grad_phi l(D_a; phi_0),
    L = alpha l(D_b; phi_0) + (1 - alpha) l(D_b; phi_1),

trained over items by the generator's weights alone (``alpha`` = 0.1: the cold-start loss and the warm-up loss).
In jaxrec the step moves the leaf ``context_delta`` (``phi = phi_0 + context_delta``, frozen at 0 as a
meta-parameter, so that ``phi_0`` is the generator's), by the gradient inner loop: second order is the exact
meta-gradient through the step, first order drops it.

Choices where the papers leave a detail open or where jaxrec differs, each tested:

* MWUF's ``phi_cold`` is the mean of the item id embedding table (the paper's start for a new item), for every
  task item, warm or new: meta-training simulates the cold start it is for; it is not updated on the support
  ratings (the paper also trains it by gradient steps as a stream of interactions arrives; with a few support
  ratings and no stream, the shift is what carries them). With no support row (``context_n = 0``, as the
  supervised model has) MWUF is the base model itself, each row reading its own item's embedding;
* MetaEmb's generated embedding replaces the id embedding of an item the model does not know (the OOV slot 0):
  new items, and meta-train items whose ids are hidden (``task_item_dropout=1``: every meta-train item is cold
  while the generator learns); an item the base model knows reads its own embedding;
* MetaEmb's cold-start loss ``l(D_b; phi_0)`` is taken on the query rows, the ones the meta-objective sees (the
  paper takes it on ``D_a``; both are samples of the item's ratings); its generator is a hidden layer of 16 with
  tanh and a linear map to the embedding;
* MWUF's ``tau_scale`` ends in a sigmoid, each coordinate in ``(0, 1)``; ``tau_shift`` is linear;
* widths: field embeddings 16, base MLP 32-32, every meta network a hidden layer of 16.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.core.features import FeatureSpec
from jaxrec.core.losses import masked_mean
from jaxrec.models.common import (
    Embed,
    Head,
    MultiHotEmbed,
    Rows,
    categorical_fields,
    context_filter,
    multi_hot_fields,
    output_offset,
    spec_field,
    valid_ids,
    with_context,
)

__all__ = ["FROZEN_BASE", "MWUF", "MetaEmb"]

#: the base model's parameters (every one but the meta networks): ``frozen`` in meta-training
FROZEN_BASE = "^params/(embed_|dense_|head/)"


class _WarmUpBase(nn.Module):
    """The base model of both methods; a subclass says what the task item's id embedding is."""

    spec: FeatureSpec = spec_field
    width: int = 16
    hidden: Sequence[int] = (32, 32)
    meta_hidden: int = 16

    #: the tasks this model adapts to: an item, warmed up from its few ratings
    task_side = "item"

    def setup(self):
        spec = self.spec
        if "user" not in spec.categorical or "item" not in spec.categorical:
            raise ValueError(f"{type(self).__name__} needs the user and the item ids in the spec")
        self._user_fields = tuple(categorical_fields(spec, ("user",), sides=("user",)))
        self._item_fields = tuple(categorical_fields(spec, (), sides=("item",)))
        self._user_multi_hot = tuple(multi_hot_fields(spec, sides=("user",)))
        self._item_multi_hot = tuple(multi_hot_fields(spec, sides=("item",)))
        keys = (*self._user_fields, "item", *self._item_fields)
        self.embed = {key: Embed(spec.categorical[key], self.width) for key in keys}
        self.dense = {key: MultiHotEmbed(self.width) for key in (*self._user_multi_hot, *self._item_multi_hot)}
        self.head = Head(tuple(self.hidden), output_offset(spec))
        self.setup_warm_up()

    def setup_warm_up(self):
        raise NotImplementedError

    def item_id_embedding(self, rows: Rows) -> jax.Array:
        raise NotImplementedError

    def _embed(self, key: str, rows: Rows) -> jax.Array:
        return self.embed[key](valid_ids(rows[key], self.spec.categorical[key]))

    def item_features(self, rows: Rows) -> jax.Array | None:
        """The item side features' embeddings of each row, concatenated (None without item features)."""
        fields = [self._embed(key, rows) for key in self._item_fields]
        fields += [self.dense[key](rows[key]) for key in self._item_multi_hot]
        return jnp.concatenate(fields, axis=-1) if fields else None

    def __call__(self, rows: Rows) -> jax.Array:
        """Score rows with the task item's id embedding (:meth:`item_id_embedding`).

        Args:
          rows: the row dict.

        Returns:
          float32 ``[rows]`` scores.
        """
        fields = [self._embed(key, rows) for key in self._user_fields]
        fields += [self.dense[key](rows[key]) for key in self._user_multi_hot]
        fields.append(self.item_id_embedding(rows))
        item_features = self.item_features(rows)
        if item_features is not None:
            fields.append(item_features)
        return self.head(jnp.concatenate(fields, axis=-1))


class MWUF(_WarmUpBase):
    """The base model with MWUF's warm-up of the task item's id embedding (see the module docstring).

    ``model.apply(variables, rows)`` scores rows of one item task with the support statistics held in the
    ``context_*`` leaves (``context_n = 0``: the base model, each row's own item embedding); ``encode_support``
    computes them.

    Attributes:
      spec: the feature spec (it needs the ``user`` and ``item`` ids).
      width: the width of every field embedding.
      hidden: the widths of the base model's hidden layers.
      meta_hidden: the hidden width of each meta network.
    """

    def setup_warm_up(self):
        self.scale_hidden = nn.Dense(self.meta_hidden)
        self.scale_out = nn.Dense(self.width)
        self.shift_hidden = nn.Dense(self.meta_hidden)
        self.shift_out = nn.Dense(self.width)
        zeros = nn.initializers.zeros
        self.context_users = self.param("context_users", zeros, (self.width,))
        self.context_n = self.param("context_n", zeros, ())

    def cold_embedding(self) -> jax.Array:
        """``phi_cold``: the mean of the item id embeddings (slot 0, the OOV slot, excluded)."""
        return jnp.mean(self.embed["item"].embedding[1:], axis=0)

    def warm_embedding(self, rows: Rows) -> jax.Array:
        """``phi_warm`` of each row's item, ``[rows, width]``, from its features and ``context_users``."""
        item_features = self.item_features(rows)
        if item_features is not None:
            scale = nn.sigmoid(self.scale_out(nn.relu(self.scale_hidden(item_features))))
        else:  # no item side features: nothing for the scaling network to read
            scale = jnp.ones((rows["item"].shape[0], self.width))
        shift = self.shift_out(nn.relu(self.shift_hidden(self.context_users)))
        return scale * self.cold_embedding() + shift

    def item_id_embedding(self, rows: Rows) -> jax.Array:
        # context_n is 0 exactly when no support set was encoded (the supervised model, pre-training)
        return jnp.where(self.context_n > 0, self.warm_embedding(rows), self._embed("item", rows))

    def encode_support(self, rows: Rows, mask: jax.Array) -> dict[str, jax.Array]:
        """The support statistics: ``{"context_users": mean e(u), "context_n": |S|}``.

        Args:
          rows: the support rows (padding rows zeroed).
          mask: bool ``[rows]``; false rows are padding.

        Returns:
          The values of the ``context_*`` leaves.
        """
        users = self._embed("user", rows)
        return {"context_users": masked_mean(users, mask), "context_n": jnp.sum(mask).astype(users.dtype)}

    default_adapt_filter = context_filter(("context_users", "context_n"))


class MetaEmb(_WarmUpBase):
    """The base model with MetaEmb's generated id embedding for an item it does not know (see the module
    docstring).

    Attributes:
      spec: the feature spec (it needs the ``user`` and ``item`` ids, and item side features for the generator).
      width: the width of every field embedding.
      hidden: the widths of the base model's hidden layers.
      meta_hidden: the hidden width of the generator.
      cold_weight: ``alpha``, the weight of the cold-start loss in :meth:`query_loss`.
    """

    cold_weight: float = 0.1

    def setup_warm_up(self):
        if not (self.spec.fields("item_") or self.spec.multi_hot_fields("item_")):
            raise ValueError("MetaEmb generates an item's embedding from its side features: the spec has none")
        self.generator_hidden = nn.Dense(self.meta_hidden)
        self.generator_out = nn.Dense(self.width)
        self.context_delta = self.param("context_delta", nn.initializers.zeros, (self.width,))

    def generated_embedding(self, rows: Rows) -> jax.Array:
        """``phi_0 = G(e(item features))`` of each row's item, ``[rows, width]``: a function of its features only."""
        return self.generator_out(jnp.tanh(self.generator_hidden(self.item_features(rows))))

    def item_id_embedding(self, rows: Rows) -> jax.Array:
        cold = valid_ids(rows["item"], self.spec.categorical["item"]) == 0
        generated = self.generated_embedding(rows) + self.context_delta
        return jnp.where(cold[:, None], generated, self._embed("item", rows))

    def query_loss(self, loss: Callable) -> Callable:
        """MetaEmb's meta-objective on the query rows: ``alpha loss(phi_0) + (1 - alpha) loss(phi_1)``.

        Args:
          loss: ``loss(params, rows, mask) -> scalar`` on the model's scores.

        Returns:
          ``loss(params, rows, mask) -> scalar`` of the adapted ``params`` (``phi_0``: ``context_delta`` at 0).
        """
        alpha = float(self.cold_weight)

        def objective(params, rows, mask):
            cold = with_context(params, {"context_delta": jnp.zeros_like(params["params"]["context_delta"])})
            return alpha * loss(cold, rows, mask) + (1.0 - alpha) * loss(params, rows, mask)

        return objective

    default_adapt_filter = context_filter(("context_delta",))
