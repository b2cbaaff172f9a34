"""The two-tower retrieval model: a user vector and an item vector whose dot product is the score."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.core.features import FeatureSpec
from jaxrec.core.params import path_names
from jaxrec.models.common import (
    Embed,
    MultiHotEmbed,
    Rows,
    categorical_fields,
    check_ids,
    multi_hot_fields,
    output_offset,
    small_normal,
    spec_field,
    valid_ids,
)


class TwoTower(nn.Module):
    """Two towers (Covington et al. RecSys 2016; Yi et al. RecSys 2019) scored by a dot product::

        s(u, i) = <p_u, q_i> + b_i + mu,   p_u = w + sum_f E_f[u_f] (+ mean_{j in S_u} H[j]),
        q_i = MLP([F_g[i_g]]_g)

    * **User tower**: ``user_vector`` ``w [embed]`` (the part adapted per user), plus the embeddings of the user's
      categorical features (``embed_user_<field>``) and of the user id when ``"user"`` is in ``use_ids``; with
      ``pool_history``, the mean of the history embeddings ``H`` (``embed_history_item``) of the user's support
      items ``S_u`` (row key ``history_item``): the user tower of FISM (Kabbur et al. KDD 2013) and of YouTube's
      candidate generator, an item-to-item model learned end to end. A new
      user's vector is ``w`` adapted on their support interactions: the tower is built from the support set and
      the features. ``p_u`` is linear in ``w``, so a Newton inner step on ``user_vector`` is the exact MAP fold-in
      for a quadratic loss and an IRLS step for the ranking losses (:mod:`jaxrec.core.newton`).
    * **Item tower**: the embeddings of the item id (when in ``use_ids``) and the item's features (categorical
      ``embed_item_<field>``, multi-hot ``dense_<key>``), concatenated, through ``hidden`` Dense+ReLU layers and a
      linear map to ``embed`` (``item_out``); plus the bias ``b_i`` (``bias_embed_item``) and the global offset
      ``mu`` (``global_bias``: the middle of the rating range for explicit targets, 0 for logits). It depends on item
      keys only, so the catalogue's item vectors are computed once (:meth:`item_vectors`) and scoring every item
      is one matrix product.

    Default adapt filter: ``user_vector``.

    Attributes:
      spec: the feature spec.
      embed: the width of the user and item vectors.
      hidden: the widths of the item tower's hidden layers.
      use_ids: the ids embedded (default the item id; the user id gives warm users their own vector).
      item_bias: add the per-item bias ``b_i`` (needs an item id in the spec).
      pool_history: add the mean history embedding of the support items (needs ``spec.history > 0``).
    """

    spec: FeatureSpec = spec_field
    embed: int = 32
    hidden: Sequence[int] = ()
    use_ids: Sequence[str] = ("item",)
    item_bias: bool = True
    pool_history: bool = False

    #: the adapted user vector enters the score linearly: ``inner_solver="auto"`` solves it by a Newton step
    linear_user_side = True

    def setup(self):
        spec = self.spec
        check_ids(spec, self.use_ids)
        if self.item_bias and "item" not in spec.categorical:
            raise ValueError("item_bias needs an item id in the spec")
        self.user_vector = self.param("user_vector", nn.initializers.zeros_init(), (self.embed,))
        self.user_keys = categorical_fields(spec, self.use_ids, sides=("user",))
        self.item_keys = categorical_fields(spec, self.use_ids, sides=("item",))
        self.item_multi_hot = multi_hot_fields(spec, sides=("item",))
        if not self.item_keys and not self.item_multi_hot:
            raise ValueError("TwoTower needs an item id (use_ids) or item features for its item tower")
        self.user_tables = {
            key: Embed(spec.categorical[key], self.embed, embedding_init=small_normal, name=f"embed_{key}")
            for key in self.user_keys
        }
        width = self.embed
        self.item_tables = {
            key: Embed(spec.categorical[key], width, embedding_init=small_normal, name=f"embed_{key}")
            for key in self.item_keys
        }
        if self.pool_history:
            if not spec.history or "item" not in spec.categorical:
                raise ValueError("pool_history needs history_item rows (spec.history > 0) and an item vocabulary")
            self.history_table = Embed(
                spec.categorical["item"], self.embed, embedding_init=small_normal, name="embed_history_item"
            )
        self.item_dense = {key: MultiHotEmbed(width, name=f"dense_{key}") for key in self.item_multi_hot}
        self.item_hidden = [nn.Dense(w, name=f"item_hidden_{i}") for i, w in enumerate(self.hidden)]
        self.item_out = nn.Dense(self.embed, use_bias=False, name="item_out")
        self.global_bias = self.param("global_bias", nn.initializers.constant(output_offset(spec)), ())
        if self.item_bias:
            self.item_bias_table = Embed(
                spec.categorical["item"], 1, embedding_init=nn.initializers.zeros_init(), name="bias_embed_item"
            )

    def user_vectors(self, rows: Rows) -> jax.Array:
        """The user tower.

        Args:
          rows: rows with the user keys (leading shape ``[...]``, that of ``rows["user"]``).

        Returns:
          ``[..., embed + 1]``: ``p_u`` and a trailing 1 (the coefficient of ``b_i``).
        """
        lead = jnp.shape(rows["user"] if "user" in rows else rows["item"])
        vector = jnp.broadcast_to(self.user_vector, tuple(lead) + (self.embed,))
        parts = self._row_parts(rows)
        if parts is not None:
            vector = vector + parts
        return jnp.concatenate([vector, jnp.ones(vector.shape[:-1] + (1,), vector.dtype)], axis=-1)

    def _row_parts(self, rows: Rows) -> jax.Array | None:
        """What each row adds to the shared ``user_vector``: its user features' embeddings and the pooled history
        (``[..., embed]``), or None when there is nothing to add."""
        parts = [self.user_tables[key](valid_ids(rows[key], self.spec.categorical[key])) for key in self.user_keys]
        if self.pool_history:
            history = valid_ids(rows["history_item"], self.spec.categorical["item"])
            vectors = self.history_table(history)
            present = (history > 0)[..., None].astype(vectors.dtype)
            pooled = jnp.sum(vectors * present, axis=-2)
            parts.append(pooled / jnp.maximum(jnp.sum(present, axis=-2), 1.0))
        return sum(parts[1:], parts[0]) if parts else None

    def item_vectors(self, rows: Rows) -> jax.Array:
        """The item tower.

        Args:
          rows: rows with the item keys (leading shape ``[...]``).

        Returns:
          ``[..., embed + 1]``: ``q_i`` and the bias ``b_i + mu`` (``b_i`` = 0 without ``item_bias``).
        """
        parts = [self.item_tables[k](valid_ids(rows[k], self.spec.categorical[k])) for k in self.item_keys]
        parts += [self.item_dense[k](rows[k]) for k in self.item_multi_hot]
        x = jnp.concatenate(parts, axis=-1)
        for layer in self.item_hidden:
            x = nn.relu(layer(x))
        vector = self.item_out(x)
        if self.item_bias:
            bias = self.item_bias_table(valid_ids(rows["item"], self.spec.categorical["item"]))
        else:
            bias = jnp.zeros(vector.shape[:-1] + (1,), vector.dtype)
        bias = bias + self.global_bias
        return jnp.concatenate([vector, bias], axis=-1)

    def __call__(self, rows: Rows) -> jax.Array:
        """Score rows.

        Args:
          rows: the row dict.

        Returns:
          float32 ``[rows]`` scores ``<p_u, q_i> + b_i + mu``.
        """
        item = self.item_vectors(rows)
        vectors, bias = item[..., :-1], item[..., -1]
        # the shared user vector as a matrix-vector product, never broadcast to the rows: a Newton step's
        # Hessian-vector products (a tangent per adapted coordinate) then stay [rows, tangents], not
        # [tangents, rows, embed]
        scores = vectors @ self.user_vector + bias
        parts = self._row_parts(rows)
        return scores if parts is None else scores + jnp.sum(vectors * parts, axis=-1)

    @staticmethod
    def default_adapt_filter(path, leaf) -> bool:
        """Select the parameters adapted per task: the user vector ``w``.

        Args:
          path: the parameter's key path.
          leaf: the parameter.

        Returns:
          Whether the parameter adapts.
        """
        return "user_vector" in path_names(path)
