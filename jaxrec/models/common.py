"""Building blocks shared by the model families: id handling, field lists, the multi-hot layer, the head."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.core.features import FeatureSpec
from jaxrec.core.params import path_names

Rows = Mapping[str, jax.Array]

# A FeatureSpec holds dicts, so it is unhashable; hash=False keeps the (hashable) module usable as a jit key.
spec_field = dataclasses.field(hash=False)
small_normal = nn.initializers.normal(stddev=0.1)


def output_offset(spec: FeatureSpec) -> float:
    """The starting value of a model's output bias.

    Args:
      spec: the feature spec.

    Returns:
      The middle of the rating range for explicit targets, 0 for implicit (logit) targets.
    """
    if spec.rating_range is None or spec.target == "label":
        return 0.0
    low, high = spec.rating_range
    return 0.5 * (float(low) + float(high))


class Embed(nn.Embed):
    """``nn.Embed`` (the same parameters and lookup) that reads a one-row table as any other.

    Flax returns a one-row table broadcast to ``ids.shape + (features,)``, which fails for a scalar id: one user's
    row, as the top-N evaluation and the service read each user under ``vmap``. A side column none of whose values
    can be read keeps such a table (its unknown slot alone), and so does a model's user id where every task is a new
    user (``"user": 1``).
    """

    def __call__(self, inputs: jax.Array) -> jax.Array:
        if self.num_embeddings != 1:
            return super().__call__(inputs)
        return super().__call__(inputs[..., None])[..., 0, :]


def valid_ids(ids: jax.Array, vocab: int) -> jax.Array:
    """Map ids outside ``[0, vocab)`` to the OOV slot 0.

    Args:
      ids: vocabulary ids of any shape.
      vocab: the vocabulary size.

    Returns:
      int32 ids, each in ``[0, vocab)``.
    """
    ids = jnp.asarray(ids).astype(jnp.int32)
    return jnp.where((ids >= 0) & (ids < vocab), ids, 0)


def categorical_fields(spec: FeatureSpec, use_ids: Sequence[str], sides: Sequence[str] = ("user", "item")):
    """List the categorical row keys a model reads.

    Args:
      spec: the feature spec.
      use_ids: the ids the model reads (``"user"`` and/or ``"item"``).
      sides: the sides to read, in order.

    Returns:
      The keys grouped by side (user side, then item side): the id (if in ``use_ids`` and in the spec), then the
      ``<side>_<field>`` side features in sorted order.
    """
    fields = []
    for side in sides:
        if side in use_ids and side in spec.categorical:
            fields.append(side)
        fields.extend(spec.fields(f"{side}_"))
    return fields


def multi_hot_fields(spec: FeatureSpec, sides: Sequence[str] = ("user", "item")):
    """List the multi-hot row keys a model reads.

    Args:
      spec: the feature spec.
      sides: the sides to read, in order.

    Returns:
      The ``<side>_<field>`` multi-hot keys, grouped by side.
    """
    return [key for side in sides for key in spec.multi_hot_fields(f"{side}_")]


def num_rows(rows: Rows) -> tuple[int]:
    """The leading axis shared by every array of ``rows``.

    Args:
      rows: the row dict.

    Returns:
      ``(rows,)``.
    """
    return (jnp.shape(rows["item"] if "item" in rows else next(iter(rows.values())))[0],)


def check_ids(spec: FeatureSpec, use_ids: Sequence[str]) -> None:
    """Check a model's ``use_ids``.

    Args:
      spec: the feature spec.
      use_ids: the ids the model reads.

    Raises:
      ValueError: if ``use_ids`` names something other than ``"user"`` and ``"item"``.
    """
    unknown = [key for key in use_ids if key not in ("user", "item")]
    if unknown:
        raise ValueError(f"use_ids may only name 'user' and/or 'item', got {unknown}")


class MultiHotEmbed(nn.Module):
    """Bias-free dense layer ``x @ W`` for a multi-hot (or weighted) field ``x [rows, width]``.

    With ``squared=True`` it also returns ``(x*x) @ (W*W)``, the per-field term of the factorisation-machine
    identity. Parameter: ``kernel [width, features]`` (the same as ``nn.Dense(features, use_bias=False)``).
    With ``mean=True`` the row is divided by its sum first (MeLU's released code averages a movie's genres, so
    that the field's scale does not grow with their number); a row of zeros stays zero.

    Attributes:
      features: the output width.
      kernel_init: the initialiser of ``kernel``.
      mean: average the row's entries instead of summing them.
    """

    features: int
    kernel_init: Callable = nn.initializers.lecun_normal()
    mean: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, squared: bool = False):
        """Apply the layer.

        Args:
          x: the field ``[rows, width]``.
          squared: also return ``(x*x) @ (W*W)``.

        Returns:
          ``x @ W`` ``[rows, features]``, or the pair ``(x @ W, (x*x) @ (W*W))`` with ``squared``.
        """
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
        x = x.astype(kernel.dtype)
        if self.mean:
            total = jnp.sum(x, axis=-1, keepdims=True)
            x = x / jnp.where(total > 0, total, 1)  # a row of zeros stays zero, in any precision
        out = x @ kernel
        if squared:
            return out, jnp.square(x) @ jnp.square(kernel)
        return out


class Head(nn.Module):
    """The decision layers: ``hidden`` Dense+ReLU layers then ``Dense(1)`` whose bias starts at ``offset``.

    ``projection``: a bias-free linear map ``A`` (``head/projection``, orthogonal start) between the last hidden
    layer ``h`` and the output, ``s = w^T A h + b``. It adds nothing a network trained as a whole could not fold
    into ``w``; it matters when only the output layer adapts: a prior ``w ~ N(theta, diag(alpha))`` on the adapted
    weights is then the full-covariance prior ``A^T diag(alpha) A`` on the effective user vector ``A^T w`` over
    ``h``, so meta-learning ``A`` learns how users' preferences co-vary (the ReLU of ``h`` leaves the hidden
    layers only a per-unit scale for that). With a Newton inner step this is Bayesian linear regression on
    meta-learned features with a meta-learned prior mean and covariance (ALPaCA, Harrison et al. 2018).

    Attributes:
      hidden: the widths of the hidden layers (``hidden_<i>``).
      offset: the starting value of the output bias.
      projection: insert the projection ``A`` before the output layer.
    """

    hidden: Sequence[int]
    offset: float = 0.0
    projection: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Score features.

        Args:
          x: features ``[..., d]``.

        Returns:
          One score per feature vector, ``[...]``.
        """
        for i, width in enumerate(self.hidden):
            x = nn.relu(nn.Dense(width, name=f"hidden_{i}")(x))
        if self.projection:
            width = x.shape[-1]
            x = nn.Dense(width, use_bias=False, kernel_init=nn.initializers.orthogonal(), name="projection")(x)
        out = nn.Dense(1, bias_init=nn.initializers.constant(self.offset), name="output")(x)
        return out[..., 0]


def under(path, name: str) -> bool:
    """Whether a parameter's key path passes through ``name`` (e.g. ``"head"``).

    Args:
      path: the parameter's key path.
      name: a module or parameter name.

    Returns:
      Whether ``name`` is one of the path's names.
    """
    return name in path_names(path)


def context_filter(leaves: Sequence[str]):
    """The ``default_adapt_filter`` of a model that encodes a support set into named leaves (TaNP, LWA, MWUF, ...).

    Args:
      leaves: the names of the leaves a task sets (``context_*``).

    Returns:
      A static method ``default_adapt_filter(path, leaf)``: whether the parameter's last name is one of ``leaves``.
    """
    names = tuple(leaves)

    def default_adapt_filter(path, leaf) -> bool:
        """Select the leaves that adapt to a task: the model's context leaves.

        Args:
          path: the parameter's key path.
          leaf: the parameter.

        Returns:
          Whether the parameter is one of them.
        """
        return path_names(path)[-1] in names

    return staticmethod(default_adapt_filter)


def with_context(params: dict, values: dict) -> dict:
    """``params`` with some of its top-level ``params`` leaves replaced (a model's encoded context leaves).

    Args:
      params: the model variables, ``{"params": {...}, ...}``.
      values: leaf name -> new value.

    Returns:
      A new variables dict; ``params`` is not changed.
    """
    return {**params, "params": {**params["params"], **values}}


@dataclasses.dataclass(frozen=True)
class support_encoder:  # noqa: N801  (a function of the model, as a hashable value)
    """The encoder of :class:`jaxrec.core.solvers.Amortized` for a model with an ``encode_support(rows, mask)``
    method (TaNP, LWA, NLBA): ``encode(params, rows, mask)`` returns ``params`` with the leaves that method
    computes from the support rows.

    Attributes:
      model: the module.
    """

    model: nn.Module

    def __call__(self, params: dict, rows: Rows, mask: jax.Array) -> dict:
        encoded = self.model.apply(params, rows, mask, method=type(self.model).encode_support)
        return with_context(params, encoded)
