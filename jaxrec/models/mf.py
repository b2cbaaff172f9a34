"""Biased matrix factorisation."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.core.features import FeatureSpec
from jaxrec.core.params import path_names
from jaxrec.models.common import (
    Embed,
    Rows,
    output_offset,
    small_normal,
    spec_field,
    valid_ids,
)


class MatrixFactorization(nn.Module):
    """Biased matrix factorisation (Koren, Bell & Volinsky 2009)::

        r_hat(u, i) = mu + b_u + b_i + <p_u, q_i>

    ``mu`` starts at the middle of the rating range; ``b`` tables start at 0 and ``p, q ~ N(0, 0.1^2)``.
    Parameters: ``global_bias``, ``bias_embed_{user,item}`` ``[vocab, 1]``, ``embed_{user,item}``
    ``[vocab, embed]``.

    Default adapt filter: the **user side** (``b_u`` and ``p_u``). A task is one user, so the user row is the only
    part of MF that is specific to the task; for a cold-start user (id 0) adapting it learns a personal vector
    starting from the meta-learned OOV row, with item factors shared across users.

    Attributes:
      spec: the feature spec (with ``"user"`` and ``"item"`` ids).
      embed: the width of ``p_u`` and ``q_i``.
    """

    spec: FeatureSpec = spec_field
    embed: int = 32

    @nn.compact
    def __call__(self, rows: Rows) -> jax.Array:
        """Score rows.

        Args:
          rows: rows with ``user`` and ``item`` ids.

        Returns:
          float32 ``[rows]`` predictions ``r_hat(u, i)``.
        """
        spec = self.spec
        user = valid_ids(rows["user"], spec.categorical["user"])
        item = valid_ids(rows["item"], spec.categorical["item"])
        zeros = nn.initializers.zeros_init()
        user_bias = Embed(spec.categorical["user"], 1, embedding_init=zeros, name="bias_embed_user")
        item_bias = Embed(spec.categorical["item"], 1, embedding_init=zeros, name="bias_embed_item")
        user_factors = Embed(spec.categorical["user"], self.embed, embedding_init=small_normal, name="embed_user")
        item_factors = Embed(spec.categorical["item"], self.embed, embedding_init=small_normal, name="embed_item")
        global_bias = self.param("global_bias", nn.initializers.constant(output_offset(spec)), ())
        dot = jnp.sum(user_factors(user) * item_factors(item), axis=-1)
        return global_bias + user_bias(user)[..., 0] + item_bias(item)[..., 0] + dot

    @staticmethod
    def default_adapt_filter(path, leaf) -> bool:
        """Select the parameters adapted per task: the user side ``b_u`` and ``p_u``.

        Args:
          path: the parameter's key path.
          leaf: the parameter.

        Returns:
          Whether the parameter adapts.
        """
        names = path_names(path)
        return any(name in ("embed_user", "bias_embed_user") for name in names)
