"""MWUF: meta scaling and shifting networks that warm up a cold item's id embedding, after Zhu, Xie, Zhuang, Ge,
Xiao, Xiong and Zhang, "Learning to Warm Up Cold Item Embeddings for Cold-start Recommendation with Meta Scaling
and Shifting Networks", SIGIR 2021.

A base model scores a row from the embeddings of its fields, the item's id embedding ``phi_i`` among them:
``y_hat = f([e(u), e(user features), phi_i, e(item features)])`` (an MLP ``f``, trained as usual on the warm
items). A cold item's ``phi_i`` is uninformative (the paper starts it at the mean of the existing items'
embeddings, ``phi_cold``), so MWUF replaces it by a *warm* embedding,

    phi_warm = tau_scale(i) * phi_cold + tau_shift(i),
    tau_scale(i) = h(e(item features of i)),        tau_shift(i) = g(mean_{u in U(i)} e(u)),

the meta scaling network ``h`` reading the item's features and the meta shifting network ``g`` the mean id
embedding of the users who interacted with it (its support set). Meta-training fits ``h`` and ``g`` on warm items
treated as cold, with the base model fixed (the paper's two stages: ``pretrain=True`` starts at the supervised
model, ``frozen`` keeps its weights). The users' mean is the adapted leaf ``context_users`` (written by
:class:`jaxrec.core.solvers.Amortized` from the support set, so the step is exact in both orders), with
``context_n`` the support size.

Choices where the paper leaves a detail open or where jaxrec differs, each tested:

* ``phi_cold`` is the mean of the item id embedding table (the paper's start for a new item), for every task
  item, warm or new: meta-training simulates the cold start it is for; it is not updated on the support ratings
  (the paper also trains it by gradient steps as a stream of interactions arrives; with a few support ratings and
  no stream, the shift is what carries them);
* with no support row (``context_n = 0``, as the supervised model has) the model is the base model itself, each
  row reading its own item's embedding: so the ``no_adapt`` baseline is the base model and pre-training is the
  paper's first stage;
* ``tau_scale`` passes through a sigmoid, scaling each coordinate into ``(0, 1)`` (the scaling network in the
  authors' code ends in a sigmoid too); ``tau_shift`` is linear;
* widths: field embeddings 16, base MLP 32-32, both meta networks a hidden layer of 16.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.core.features import FeatureSpec
from jaxrec.core.losses import masked_mean
from jaxrec.core.params import path_names
from jaxrec.models.common import (
    Head,
    MultiHotEmbed,
    Rows,
    categorical_fields,
    multi_hot_fields,
    output_offset,
    spec_field,
    valid_ids,
)

__all__ = ["MWUF", "FROZEN_BASE"]

#: the leaves the support set is encoded into (the adapted set)
CONTEXT_LEAVES = ("context_users", "context_n")
#: the base model's parameters (every one but the meta networks): ``frozen`` in meta-training
FROZEN_BASE = "^params/(embed_|dense_|head/)"


class MWUF(nn.Module):
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

    spec: FeatureSpec = spec_field
    width: int = 16
    hidden: Sequence[int] = (32, 32)
    meta_hidden: int = 16

    #: the tasks this model adapts to: an item, warmed up from the users who rated it
    task_side = "item"

    def setup(self):
        spec = self.spec
        if "user" not in spec.categorical or "item" not in spec.categorical:
            raise ValueError("MWUF needs the user and the item ids in the spec")
        self._user_fields = tuple(categorical_fields(spec, ("user",), sides=("user",)))
        self._item_fields = tuple(categorical_fields(spec, (), sides=("item",)))
        self._user_multi_hot = tuple(multi_hot_fields(spec, sides=("user",)))
        self._item_multi_hot = tuple(multi_hot_fields(spec, sides=("item",)))
        keys = (*self._user_fields, "item", *self._item_fields)
        self.embed = {key: nn.Embed(spec.categorical[key], self.width) for key in keys}
        self.dense = {key: MultiHotEmbed(self.width) for key in (*self._user_multi_hot, *self._item_multi_hot)}
        self.head = Head(tuple(self.hidden), output_offset(spec))
        self.scale_hidden = nn.Dense(self.meta_hidden)
        self.scale_out = nn.Dense(self.width)
        self.shift_hidden = nn.Dense(self.meta_hidden)
        self.shift_out = nn.Dense(self.width)
        zeros = nn.initializers.zeros
        self.context_users = self.param("context_users", zeros, (self.width,))
        self.context_n = self.param("context_n", zeros, ())

    def _embed(self, key: str, rows: Rows) -> jax.Array:
        return self.embed[key](valid_ids(rows[key], self.spec.categorical[key]))

    def _item_features(self, rows: Rows) -> list[jax.Array]:
        fields = [self._embed(key, rows) for key in self._item_fields]
        return fields + [self.dense[key](rows[key]) for key in self._item_multi_hot]

    def cold_embedding(self) -> jax.Array:
        """``phi_cold``: the mean of the item id embeddings (slot 0, the OOV slot, excluded)."""
        return jnp.mean(self.embed["item"].embedding[1:], axis=0)

    def warm_embedding(self, rows: Rows) -> jax.Array:
        """``phi_warm`` of each row's item, ``[rows, width]``, from its features and ``context_users``."""
        item_features = self._item_features(rows)
        if item_features:
            scale = nn.sigmoid(self.scale_out(nn.relu(self.scale_hidden(jnp.concatenate(item_features, -1)))))
        else:  # no item side features: nothing for the scaling network to read
            scale = jnp.ones((rows["item"].shape[0], self.width))
        shift = self.shift_out(nn.relu(self.shift_hidden(self.context_users)))
        return scale * self.cold_embedding() + shift

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

    def __call__(self, rows: Rows) -> jax.Array:
        """Score rows: the base model, with the warm embedding of the task item once a support set is encoded.

        Args:
          rows: the row dict.

        Returns:
          float32 ``[rows]`` scores.
        """
        own = self._embed("item", rows)
        # context_n is 0 exactly when no support set was encoded (the supervised model, pre-training)
        item_id = jnp.where(self.context_n > 0, self.warm_embedding(rows), own)
        fields = [self._embed(key, rows) for key in self._user_fields]
        fields += [self.dense[key](rows[key]) for key in self._user_multi_hot]
        fields += [item_id, *self._item_features(rows)]
        return self.head(jnp.concatenate(fields, axis=-1))

    @staticmethod
    def default_adapt_filter(path, leaf) -> bool:
        """Select the leaves a support set is encoded into: ``context_users`` and ``context_n``.

        Args:
          path: the parameter's key path.
          leaf: the parameter.

        Returns:
          Whether the parameter is one of them.
        """
        return path_names(path)[-1] in CONTEXT_LEAVES
