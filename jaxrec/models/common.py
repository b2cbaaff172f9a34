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
    """Middle of the rating range for explicit targets, 0 for implicit (logit) targets."""
    if spec.rating_range is None or spec.target == "label":
        return 0.0
    low, high = spec.rating_range
    return 0.5 * (float(low) + float(high))


def valid_ids(ids: jax.Array, vocab: int) -> jax.Array:
    """Map ids outside ``[0, vocab)`` to the OOV slot 0."""
    ids = jnp.asarray(ids).astype(jnp.int32)
    return jnp.where((ids >= 0) & (ids < vocab), ids, 0)


def categorical_fields(spec: FeatureSpec, use_ids: Sequence[str], sides: Sequence[str] = ("user", "item")):
    """Categorical row keys a model reads, grouped user side then item side: the id (if in ``use_ids``), then
    the ``<side>_<field>`` side features in sorted order."""
    fields = []
    for side in sides:
        if side in use_ids and side in spec.categorical:
            fields.append(side)
        fields.extend(spec.fields(f"{side}_"))
    return fields


def multi_hot_fields(spec: FeatureSpec, sides: Sequence[str] = ("user", "item")):
    return [key for side in sides for key in spec.multi_hot_fields(f"{side}_")]


def num_rows(rows: Rows) -> tuple[int]:
    """``(rows,)``: the leading axis shared by every array of ``rows``."""
    return (jnp.shape(rows["item"] if "item" in rows else next(iter(rows.values())))[0],)


def check_ids(spec: FeatureSpec, use_ids: Sequence[str]) -> None:
    unknown = [key for key in use_ids if key not in ("user", "item")]
    if unknown:
        raise ValueError(f"use_ids may only name 'user' and/or 'item', got {unknown}")


class MultiHotEmbed(nn.Module):
    """Bias-free dense layer ``x @ W`` for a multi-hot (or weighted) field ``x [rows, width]``.

    With ``squared=True`` it also returns ``(x*x) @ (W*W)``, the per-field term of the factorisation-machine
    identity. Parameter: ``kernel [width, features]`` (the same as ``nn.Dense(features, use_bias=False)``).
    """

    features: int
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array, squared: bool = False):
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
        x = x.astype(kernel.dtype)
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
    """

    hidden: Sequence[int]
    offset: float = 0.0
    projection: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, width in enumerate(self.hidden):
            x = nn.relu(nn.Dense(width, name=f"hidden_{i}")(x))
        if self.projection:
            width = x.shape[-1]
            x = nn.Dense(width, use_bias=False, kernel_init=nn.initializers.orthogonal(), name="projection")(x)
        out = nn.Dense(1, bias_init=nn.initializers.constant(self.offset), name="output")(x)
        return out[..., 0]


def under(path, name: str) -> bool:
    return name in path_names(path)
