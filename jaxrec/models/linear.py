"""Linear and factorisation-machine models over id and side-feature fields."""

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
    num_rows,
    output_offset,
    small_normal,
    spec_field,
    valid_ids,
)


class LinearModel(nn.Module):
    """Linear / logistic regression over one-hot categoricals and multi-hot fields::

        s(x) = w_0 + sum_f w_f[x_f] + sum_m <w_m, x_m>

    one scalar weight per category (``embed_<key>`` tables ``[vocab, 1]``), a weight vector per multi-hot field
    (``dense_<key>/kernel [width, 1]``) and ``w_0`` (``bias``, initialised at the middle of the rating range). With
    ``spec.target == "label"`` the score is a logit (logistic regression, train with :func:`jaxrec.bce_loss`).

    Default adapt filter: ``w_0`` plus the **item-side feature weights** (item categorical fields and item multi-hot
    fields, not the item-id table). Within one task the user-side terms are a constant that ``w_0`` already
    absorbs, whereas the item-feature weights are exactly "how much this user likes genre g / year y"; the id
    table is left to task-local embedding adaptation (:func:`embedding_tables`).

    Attributes:
      spec: the feature spec.
      use_ids: the ids read as fields (``"user"`` and/or ``"item"``).
    """

    spec: FeatureSpec = spec_field
    use_ids: Sequence[str] = ("user", "item")

    @nn.compact
    def __call__(self, rows: Rows) -> jax.Array:
        """Score rows.

        Args:
          rows: the row dict.

        Returns:
          float32 ``[rows]`` scores ``s(x)``.

        Raises:
          ValueError: if ``use_ids`` names something other than ``"user"`` and ``"item"``.
        """
        spec = self.spec
        check_ids(spec, self.use_ids)
        zeros = nn.initializers.zeros_init()
        score = self.param("bias", nn.initializers.constant(output_offset(spec)), ())
        for key in categorical_fields(spec, self.use_ids):
            vocab = spec.categorical[key]
            score = (
                score + Embed(vocab, 1, embedding_init=zeros, name=f"embed_{key}")(valid_ids(rows[key], vocab))[..., 0]
            )
        for key in multi_hot_fields(spec):
            score = score + MultiHotEmbed(1, kernel_init=zeros, name=f"dense_{key}")(rows[key])[..., 0]
        return jnp.broadcast_to(score, num_rows(rows)).astype(jnp.float32)

    @staticmethod
    def default_adapt_filter(path, leaf) -> bool:
        """Select the parameters adapted per task: ``w_0`` and the item-side feature weights.

        Args:
          path: the parameter's key path.
          leaf: the parameter.

        Returns:
          Whether the parameter adapts.
        """
        names = path_names(path)
        if names[-1] == "bias":
            return True
        return any(name.startswith(("embed_item_", "dense_item_")) for name in names)


class FactorizationMachine(nn.Module):
    """Second-order factorisation machine (Rendle 2010) over every categorical and multi-hot field::

        s(x) = w_0 + sum_j w_j x_j + sum_{j<l} <v_j, v_l> x_j x_l

    with the pairwise term computed in O(k n) by the identity

        sum_{j<l} <v_j, v_l> x_j x_l = 1/2 sum_k [ (sum_j v_jk x_j)^2 - sum_j v_jk^2 x_j^2 ].

    One-hot categoricals contribute ``v = embed(id)`` with ``x = 1``; a multi-hot field contributes ``x @ V`` and
    ``x^2 @ V^2``. Parameters: ``bias`` (``w_0``), ``linear/embed_<key>`` ``[vocab, 1]``,
    ``linear/dense_<key>/kernel [width, 1]`` (the ``linear`` submodule is a :class:`LinearModel`),
    ``factors_embed_<key>`` ``[vocab, embed]``, ``factors_dense_<key>/kernel [width, embed]``.

    Default adapt filter: ``w_0``, the item-side linear weights (as :class:`LinearModel`: the user's taste over item
    features) and the **user-side factors** (user id and user fields): their sum is the user's latent vector, the
    FM analogue of MF's ``p_u``. Item factors stay shared.

    Attributes:
      spec: the feature spec.
      embed: the width ``k`` of the factors.
      use_ids: the ids read as fields (``"user"`` and/or ``"item"``).
    """

    spec: FeatureSpec = spec_field
    embed: int = 16
    use_ids: Sequence[str] = ("user", "item")

    @nn.compact
    def __call__(self, rows: Rows) -> jax.Array:
        """Score rows.

        Args:
          rows: the row dict.

        Returns:
          float32 ``[rows]`` scores ``s(x)``.

        Raises:
          ValueError: if ``use_ids`` names something other than ``"user"`` and ``"item"``.
        """
        spec = self.spec
        check_ids(spec, self.use_ids)
        linear = LinearModel(spec, use_ids=tuple(self.use_ids), name="linear")(rows)
        # LinearModel's own bias is the FM w_0 (kept under linear/bias).
        total, total_sq = 0.0, 0.0
        for key in categorical_fields(spec, self.use_ids):
            vocab = spec.categorical[key]
            v = Embed(vocab, self.embed, embedding_init=small_normal, name=f"factors_embed_{key}")(
                valid_ids(rows[key], vocab)
            )
            total, total_sq = total + v, total_sq + jnp.square(v)
        for key in multi_hot_fields(spec):
            v, v_sq = MultiHotEmbed(self.embed, kernel_init=small_normal, name=f"factors_dense_{key}")(
                rows[key], squared=True
            )
            total, total_sq = total + v, total_sq + v_sq
        pairwise = 0.5 * jnp.sum(jnp.square(total) - total_sq, axis=-1)
        return linear + pairwise

    @staticmethod
    def default_adapt_filter(path, leaf) -> bool:
        """Select the parameters adapted per task: ``w_0``, the item-side linear weights and the user-side factors.

        Args:
          path: the parameter's key path.
          leaf: the parameter.

        Returns:
          Whether the parameter adapts.
        """
        names = path_names(path)
        if "linear" in names:
            return LinearModel.default_adapt_filter(path, leaf)
        return any(name.startswith(("factors_embed_user", "factors_dense_user_")) for name in names)
