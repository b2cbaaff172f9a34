"""NeuMF: generalised MF plus an MLP tower (He et al., WWW 2017)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.core.features import FeatureSpec
from jaxrec.models.common import (
    Embed,
    Rows,
    output_offset,
    small_normal,
    spec_field,
    under,
    valid_ids,
)


class NeuMF(nn.Module):
    """Neural matrix factorisation (He et al., WWW 2017, "Neural Collaborative Filtering").

    GMF branch ``p_u * q_i`` (``gmf_embed_{user,item}``) and MLP branch ``MLP([p'_u, q'_i])``
    (``mlp_embed_{user,item}``, tower ``head/hidden_*``) fused by a final dense layer::

        s(u, i) = h^T [p_u * q_i ; MLP([p'_u ; q'_i])] + b

    (``head/output``; ``b`` starts mid-range for explicit ratings, so the model also fits explicit data with MSE;
    for implicit labels the score is a logit). Default adapt filter: the MLP tower and the fusion layer (``head``).

    Attributes:
      spec: the feature spec (with ``"user"`` and ``"item"`` ids).
      embed: the width of every embedding.
      hidden: the widths of the MLP tower.
    """

    spec: FeatureSpec = spec_field
    embed: int = 16
    hidden: Sequence[int] = (32, 16)

    @nn.compact
    def __call__(self, rows: Rows) -> jax.Array:
        """Score rows.

        Args:
          rows: rows with ``user`` and ``item`` ids.

        Returns:
          float32 ``[rows]`` scores ``s(u, i)``.
        """
        spec = self.spec
        n_users, n_items = spec.categorical["user"], spec.categorical["item"]
        user, item = valid_ids(rows["user"], n_users), valid_ids(rows["item"], n_items)
        gmf = Embed(n_users, self.embed, embedding_init=small_normal, name="gmf_embed_user")(user) * Embed(
            n_items, self.embed, embedding_init=small_normal, name="gmf_embed_item"
        )(item)
        mlp_in = jnp.concatenate(
            [
                Embed(n_users, self.embed, embedding_init=small_normal, name="mlp_embed_user")(user),
                Embed(n_items, self.embed, embedding_init=small_normal, name="mlp_embed_item")(item),
            ],
            axis=-1,
        )
        return _NeuMFHead(tuple(self.hidden), output_offset(spec), name="head")(gmf, mlp_in)

    @staticmethod
    def default_adapt_filter(path, leaf) -> bool:
        """Select the parameters adapted per task: the MLP tower and the fusion layer under ``head``.

        Args:
          path: the parameter's key path.
          leaf: the parameter.

        Returns:
          Whether the parameter adapts.
        """
        return under(path, "head")


class _NeuMFHead(nn.Module):
    hidden: Sequence[int]
    offset: float

    @nn.compact
    def __call__(self, gmf: jax.Array, mlp_in: jax.Array) -> jax.Array:
        x = mlp_in
        for i, width in enumerate(self.hidden):
            x = nn.relu(nn.Dense(width, name=f"hidden_{i}")(x))
        fused = jnp.concatenate([gmf, x], axis=-1)
        return nn.Dense(1, bias_init=nn.initializers.constant(self.offset), name="output")(fused)[..., 0]
