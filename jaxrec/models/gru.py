"""A GRU over the user's rating history."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.core.features import FeatureSpec
from jaxrec.models.common import (
    Embed,
    Head,
    Rows,
    output_offset,
    spec_field,
    under,
    valid_ids,
)


class _MaskedGRUStep(nn.Module):
    """One GRU step that keeps the previous state where the step is padding (``mask_t`` false)."""

    features: int

    @nn.compact
    def __call__(self, carry: jax.Array, inputs):
        x_t, mask_t = inputs
        new_carry, _ = nn.GRUCell(self.features, name="cell")(carry, x_t)
        return jnp.where(mask_t[:, None], new_carry, carry), None


class GRURecommender(nn.Module):
    """A sequence recommender over the user's rating history (GRU4Rec-style, Hidasi et al. 2016, with ratings).

    Step ``t`` reads ``x_t = [embed_history_item(history_item_t) ; (history_rating_t - c) / s]`` (``c, s`` centre
    and half-width of the rating range) into a GRU (Cho et al. 2014); padding steps (``history_item == 0``) leave
    the state unchanged, so the final state ``h`` summarises only the real history, wherever the padding sits. The
    score is ``head([h ; embed_item(item)])`` (``head/hidden_*`` ReLU layers and ``head/output``).

    The sequence input table ``embed_history_item`` is separate from the target table ``embed_item`` so each table
    is indexed by exactly one row key (:func:`embedding_tables`). Default adapt filter: ``head``.

    Attributes:
      spec: the feature spec; ``spec.history`` must be positive.
      embed: the width of the item embeddings.
      hidden_state: the width of the GRU state ``h``.
      hidden: the widths of the head's hidden layers.
    """

    spec: FeatureSpec = spec_field
    embed: int = 32
    hidden_state: int = 32
    hidden: Sequence[int] = (32,)

    @nn.compact
    def __call__(self, rows: Rows) -> jax.Array:
        """Score rows.

        Args:
          rows: rows with ``item``, ``history_item`` and ``history_rating`` ``[rows, L]`` (without
            ``history_rating``, as implicit feedback's rows are, each history item reads as a rating of 1).

        Returns:
          float32 ``[rows]`` scores.

        Raises:
          ValueError: if ``spec.history`` is not positive.
        """
        spec = self.spec
        if spec.history <= 0:
            raise ValueError("GRURecommender needs spec.history > 0 (rows with history_item / history_rating)")
        n_items = spec.categorical["item"]
        history = valid_ids(rows["history_item"], n_items)  # [rows, L]
        mask = history > 0
        if spec.rating_range is not None:
            low, high = spec.rating_range
            centre, scale = 0.5 * (low + high), max(0.5 * (high - low), 1e-6)
        else:
            centre, scale = 0.0, 1.0
        # implicit feedback (top-N rows) has interactions, not ratings: each history item reads as 1
        given = rows.get("history_rating")
        values = jnp.ones(history.shape, jnp.float32) if given is None else given.astype(jnp.float32)
        rating = jnp.where(mask, (values - centre) / scale, 0.0)
        steps = jnp.concatenate(
            [Embed(n_items, self.embed, name="embed_history_item")(history), rating[..., None]], axis=-1
        )
        scan = nn.scan(
            _MaskedGRUStep,
            variable_broadcast="params",
            split_rngs={"params": False},
            in_axes=1,
            out_axes=1,
        )
        initial = jnp.zeros((history.shape[0], self.hidden_state), jnp.float32)
        state, _ = scan(self.hidden_state, name="gru")(initial, (steps, mask))
        target = Embed(n_items, self.embed, name="embed_item")(valid_ids(rows["item"], n_items))
        return Head(tuple(self.hidden), output_offset(spec), name="head")(jnp.concatenate([state, target], -1))

    @staticmethod
    def default_adapt_filter(path, leaf) -> bool:
        """Select the parameters adapted per task: those under ``head``.

        Args:
          path: the parameter's key path.
          leaf: the parameter.

        Returns:
          Whether the parameter adapts.
        """
        return under(path, "head")
