"""LWA and NLBA: an item adapted from the users in its history, after Vartak, Thiagarajan, Miranda, Bratman and
Larochelle, "A Meta-Learning Perspective on Cold-Start Recommendations for Items", NeurIPS 2017.

Each *item* is a task (``tasks_by="item"``): its support set is some of the users who rated it, and the item is
described by nothing but them. A user network ``F`` embeds a user's fields (id and side features) into ``R^d``; the
support users are split by their rating into the two classes of the paper, *engaged* (rating ``>= threshold``)
and not, and each class is summarised by its *class representative*, the mean of its users' embeddings,

    R_1 = mean_{u in S, r_u >= threshold} F(u),        R_0 = mean_{u in S, r_u < threshold} F(u)

(the zero vector for an empty class). The item's predictor is then a function of ``(R_0, R_1)`` meta-learned over
items, with no gradient step:

* **LWA** (linear weight adaptation): a linear model of the user whose weight vector is a linear function of the
  representatives, ``y_hat(u) = c + F(u)^T (W_0 R_0 + W_1 R_1) + b``;
* **NLBA** (non-linear bias adaptation): a network of the user whose weights are shared and whose *biases* are
  item-specific, ``h_1 = relu(A_1 F(u) + V_1^0 R_0 + V_1^1 R_1 + c_1)``, ``h_l = relu(A_l h_{l-1} + V_l^0 R_0 +
  V_l^1 R_1 + c_l)``, ``y_hat(u) = c + w^T h_L + v_0^T R_0 + v_1^T R_1 + b``,

with ``c`` the middle of the rating range (the library's output offset). The representatives are the adapted
leaves ``context_r0`` and ``context_r1``: :class:`jaxrec.core.solvers.Amortized` writes them from the support
set, and meta-training differentiates the query loss through the class means into ``F``, exactly (there is no
inner gradient to drop, so both orders are the same).

Choices where the paper leaves a detail open (its experiments are on Twitter's engagement logs), each tested:

* the target is the harness's: a rating, fitted by squared error, so ``y_hat`` has no sigmoid and the classes
  come from the ratings: ``threshold`` defaults to three quarters of the rating range (4 on 1..5, 3.875 on
  0.5..5: MovieLens's usual "liked"), ``0.5`` for 0/1 labels;
* ``W_0``, ``W_1`` are ``d x d`` matrices (a general linear map of the representatives; a scalar per class is
  the special case ``W = w I``), as RecBole-MetaRec also has them;
* the representatives are means, as in the paper (RecBole-MetaRec sums them, so that its weights grow with the
  size of the history, and files a click under the non-engaged class);
* widths from RecBole-MetaRec's configuration, as the paper's production widths are not published: field
  embeddings 32, ``F`` a hidden layer of 64 then ``d`` = 32; NLBA one hidden layer of 36.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.core.features import FeatureSpec
from jaxrec.core.losses import masked_mean
from jaxrec.models.common import (
    Embed,
    MultiHotEmbed,
    Rows,
    categorical_fields,
    check_ids,
    context_filter,
    multi_hot_fields,
    output_offset,
    spec_field,
    valid_ids,
)

__all__ = ["LWA", "NLBA", "engagement_threshold"]

#: the leaves the support set is encoded into (the adapted set)
CONTEXT_LEAVES = ("context_r0", "context_r1")


def engagement_threshold(spec: FeatureSpec, threshold: float | None = None) -> float:
    """The rating from which a support user counts as *engaged* with the item.

    Args:
      spec: the feature spec.
      threshold: an explicit threshold, returned as it is.

    Returns:
      ``threshold`` when given; else 0.5 for 0/1 labels (no rating range) and ``low + 0.75 (high - low)``
      for ratings in ``[low, high]``.
    """
    if threshold is not None:
        return float(threshold)
    if spec.rating_range is None or spec.target == "label":
        return 0.5
    low, high = (float(v) for v in spec.rating_range)
    return low + 0.75 * (high - low)


class _ItemFromUsers(nn.Module):
    """What LWA and NLBA share: the user network ``F``, the class representatives and the adapted leaves."""

    spec: FeatureSpec = spec_field
    width: int = 32
    use_ids: Sequence[str] = ("user",)
    user_hidden: Sequence[int] = (64,)
    dim: int = 32
    threshold: float | None = None

    #: the tasks this model adapts to: an item, described by the users who rated it
    task_side = "item"

    def setup(self):
        spec = self.spec
        check_ids(spec, self.use_ids)
        if "item" in self.use_ids:
            raise ValueError(
                f"{type(self).__name__} describes an item by the users who rated it: use_ids may name 'user' only"
            )
        self._categorical = tuple(categorical_fields(spec, self.use_ids, sides=("user",)))
        self._multi_hot = tuple(multi_hot_fields(spec, sides=("user",)))
        if not self._categorical and not self._multi_hot:
            raise ValueError(
                f"{type(self).__name__} needs a user field: the user id (use_ids=['user']) or user side features"
            )
        self.embed = {key: Embed(spec.categorical[key], self.width) for key in self._categorical}
        self.dense = {key: MultiHotEmbed(self.width) for key in self._multi_hot}
        self.user_layers = [nn.Dense(w) for w in (*self.user_hidden, self.dim)]
        zeros = nn.initializers.zeros
        self.context_r0 = self.param("context_r0", zeros, (self.dim,))
        self.context_r1 = self.param("context_r1", zeros, (self.dim,))
        self.setup_predictor()

    def setup_predictor(self):
        raise NotImplementedError

    def user_embedding(self, rows: Rows) -> jax.Array:
        """``F(u)`` of each row's user, ``[rows, d]``."""
        fields = [self.embed[k](valid_ids(rows[k], self.spec.categorical[k])) for k in self._categorical]
        fields += [self.dense[k](rows[k]) for k in self._multi_hot]
        x = jnp.concatenate(fields, axis=-1)
        for i, layer in enumerate(self.user_layers):
            x = layer(x)
            if i + 1 < len(self.user_layers):
                x = nn.relu(x)
        return x

    def encode_support(self, rows: Rows, mask: jax.Array) -> dict[str, jax.Array]:
        """The class representatives of a support set: ``{"context_r0": R_0, "context_r1": R_1}``.

        Args:
          rows: the support rows (padding rows zeroed).
          mask: bool ``[rows]``; false rows are padding.

        Returns:
          The mean ``F(u)`` of the non-engaged and of the engaged support users (zeros for an empty class).
        """
        users = self.user_embedding(rows)
        engaged = jnp.asarray(rows[self.spec.target]) >= engagement_threshold(self.spec, self.threshold)
        mask = mask.astype(bool)
        return {"context_r0": masked_mean(users, mask & ~engaged), "context_r1": masked_mean(users, mask & engaged)}

    default_adapt_filter = context_filter(CONTEXT_LEAVES)


class LWA(_ItemFromUsers):
    """Linear weight adaptation (Vartak et al., NeurIPS 2017): ``y_hat(u) = c + F(u)^T (W_0 R_0 + W_1 R_1) + b``.

    ``model.apply(variables, rows)`` scores rows with the representatives held in ``context_r0`` /
    ``context_r1`` (zeros: an item with no history, scored ``c + b``); ``encode_support`` computes them. See the
    module docstring for the choices made.

    Attributes:
      spec: the feature spec.
      width: the width of every user field embedding.
      use_ids: ``("user",)`` to embed the user id as a field, ``()`` for side features only.
      user_hidden: the hidden widths of ``F``.
      dim: ``d``, the width of ``F(u)`` and of the representatives.
      threshold: the engagement threshold (None: :func:`engagement_threshold`'s default).
    """

    def setup_predictor(self):
        glorot = nn.initializers.xavier_uniform()
        self.weight_r0 = self.param("weight_r0", glorot, (self.dim, self.dim))
        self.weight_r1 = self.param("weight_r1", glorot, (self.dim, self.dim))
        self.bias = self.param("bias", nn.initializers.constant(output_offset(self.spec)), ())

    def __call__(self, rows: Rows) -> jax.Array:
        """Score rows with the representatives in the ``context_*`` leaves.

        Args:
          rows: the row dict.

        Returns:
          float32 ``[rows]`` scores.
        """
        weight = self.weight_r0 @ self.context_r0 + self.weight_r1 @ self.context_r1
        return self.user_embedding(rows) @ weight + self.bias


class NLBA(_ItemFromUsers):
    """Non-linear bias adaptation (Vartak et al., NeurIPS 2017): a network of ``F(u)`` whose biases are linear in
    the item's representatives; see the module docstring for the equations and the choices made.

    Attributes:
      spec: the feature spec.
      width: the width of every user field embedding.
      use_ids: ``("user",)`` to embed the user id as a field, ``()`` for side features only.
      user_hidden: the hidden widths of ``F``.
      dim: ``d``, the width of ``F(u)`` and of the representatives.
      threshold: the engagement threshold (None: :func:`engagement_threshold`'s default).
      hidden: the widths of the bias-adapted layers.
    """

    hidden: Sequence[int] = (36,)

    def setup_predictor(self):
        self.layers = [nn.Dense(w) for w in self.hidden]
        self.layer_bias_r0 = [nn.Dense(w, use_bias=False) for w in self.hidden]
        self.layer_bias_r1 = [nn.Dense(w, use_bias=False) for w in self.hidden]
        self.output = nn.Dense(1, bias_init=nn.initializers.constant(output_offset(self.spec)))
        self.output_bias_r0 = nn.Dense(1, use_bias=False)
        self.output_bias_r1 = nn.Dense(1, use_bias=False)

    def __call__(self, rows: Rows) -> jax.Array:
        """Score rows with the representatives in the ``context_*`` leaves.

        Args:
          rows: the row dict.

        Returns:
          float32 ``[rows]`` scores.
        """
        r0, r1 = self.context_r0, self.context_r1
        h = self.user_embedding(rows)
        for layer, v0, v1 in zip(self.layers, self.layer_bias_r0, self.layer_bias_r1, strict=True):
            h = nn.relu(layer(h) + v0(r0) + v1(r1))
        return (self.output(h) + self.output_bias_r0(r0) + self.output_bias_r1(r1))[..., 0]
