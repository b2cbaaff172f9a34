"""MeLU: the feature-embedding MLP of Lee et al. (KDD 2019)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.core.features import FeatureSpec
from jaxrec.models.common import (
    Embed,
    Head,
    MultiHotEmbed,
    Rows,
    categorical_fields,
    check_ids,
    multi_hot_fields,
    output_offset,
    spec_field,
    under,
    valid_ids,
)


class MeLU(nn.Module):
    """MeLU (Lee et al., KDD 2019, "MeLU: Meta-Learned User Preference Estimator for Cold-Start Recommendation").

    * Embedding layer: one ``Embed(vocab, embed)`` per categorical field (``embed_<key>``), the ids named in
      ``use_ids`` included (MeLU itself uses features only: ``use_ids=()``), and a bias-free
      ``dense_<key>: [width, embed]`` per multi-hot field (e.g. genres), of the field's values summed or, with
      ``multi_hot="mean"`` (MeLU's released code), averaged.
    * Feature-interaction layer (``interaction``): ``None`` concatenates the field embeddings ``e_1..e_n``;
      ``"fm"`` also appends the bi-interaction pooling of Neural FM (He & Chua 2017)
      ``1/2 [(sum_f e_f)^2 - sum_f e_f^2]`` (the FM pairwise term kept per dimension; no parameters).
    * Prediction MLP ``head``: ``hidden`` Dense+ReLU layers and ``Dense(1)`` (bias starting mid-range).
    * ``item_bias`` (default off): an additive per-item term ``b_i`` read by the item id from
      ``bias_embed_item: Embed(item vocab, 1)`` (starting at 0), ``s(u, i) = head(x) + b_i``. It is outside ``head``,
      so with the default adapt filter it is meta-learned (and pretrained) but not adapted, and the head's output
      bias plays the user offset ``b_u`` of the classical bias model ``mu + b_u + b_i``.
    * ``projection`` (default off): a bias-free linear map between the last hidden layer and the output
      (:class:`Head`), so that a Newton step on ``head/output`` has a meta-learned full-covariance prior.

    The reference workload of the benchmarks is ``MeLU(reference_spec(V), embed=32, hidden=(64, 64),
    use_ids=("item",), interaction=None)``: 6 embeddings + genres of width 32 -> Dense(64) relu -> Dense(64) relu ->
    Dense(1), trained with MSE.

    Default adapt filter: the decision layers (``head``), the MeLU local update; embeddings are meta-learned only.

    Attributes:
      spec: the feature spec.
      embed: the width of every field embedding.
      hidden: the widths of the head's hidden layers.
      use_ids: the ids embedded as fields (``"user"`` and/or ``"item"``; MeLU itself: none).
      interaction: ``None`` or ``"fm"`` (the bi-interaction pooling).
      item_bias: add the per-item term ``b_i`` (needs an item id in the spec).
      projection: the head's projection ``A`` before its output layer.
      multi_hot: ``"sum"`` or ``"mean"``: how a multi-hot field's values are pooled before its embedding.
    """

    spec: FeatureSpec = spec_field
    embed: int = 32
    hidden: Sequence[int] = (64, 64)
    use_ids: Sequence[str] = ()
    interaction: str | None = "fm"
    item_bias: bool = False
    projection: bool = False
    multi_hot: str = "sum"

    @nn.compact
    def __call__(self, rows: Rows) -> jax.Array:
        """Score rows.

        Args:
          rows: the row dict.

        Returns:
          float32 ``[rows]`` scores.

        Raises:
          ValueError: if ``use_ids`` names something other than ``"user"`` and ``"item"``, ``item_bias`` is set
            without an item id in the spec, ``interaction`` is neither None nor ``"fm"``, ``multi_hot`` is neither
            ``"sum"`` nor ``"mean"``, or there is no field.
        """
        spec = self.spec
        check_ids(spec, self.use_ids)
        if self.item_bias and "item" not in spec.categorical:
            raise ValueError("item_bias needs an item id in the spec")
        if self.interaction not in (None, "fm"):
            raise ValueError(f"interaction must be None or 'fm', got {self.interaction!r}")
        if self.multi_hot not in ("sum", "mean"):
            raise ValueError(f"multi_hot must be 'sum' or 'mean', got {self.multi_hot!r}")
        fields = []
        for key in categorical_fields(spec, self.use_ids):
            vocab = spec.categorical[key]
            fields.append(Embed(vocab, self.embed, name=f"embed_{key}")(valid_ids(rows[key], vocab)))
        for key in multi_hot_fields(spec):
            fields.append(MultiHotEmbed(self.embed, mean=self.multi_hot == "mean", name=f"dense_{key}")(rows[key]))
        if not fields:
            raise ValueError("MeLU needs at least one field: add side features to the spec or ids to use_ids")
        features = list(fields)
        if self.interaction == "fm":
            stacked = jnp.stack(fields, axis=-2)
            features.append(0.5 * (jnp.square(jnp.sum(stacked, -2)) - jnp.sum(jnp.square(stacked), -2)))
        x = jnp.concatenate(features, axis=-1)
        score = Head(tuple(self.hidden), output_offset(spec), self.projection, name="head")(x)
        if self.item_bias:
            vocab = spec.categorical["item"]
            table = Embed(vocab, 1, embedding_init=nn.initializers.zeros, name="bias_embed_item")
            score = score + table(valid_ids(rows["item"], vocab))[..., 0]
        return score

    @staticmethod
    def default_adapt_filter(path, leaf) -> bool:
        """Select the parameters adapted per task: the decision layers under ``head``.

        Args:
          path: the parameter's key path.
          leaf: the parameter.

        Returns:
          Whether the parameter adapts.
        """
        return under(path, "head")
