"""MAMO: Dong, Yuan, Yao, Xu and Zhu, "MAMO: Memory-Augmented Meta-Optimization for Cold-start Recommendation",
KDD 2020.

MAML gives every user the same initialisation; MAMO gives each user their own, read from memories keyed by the
user's profile, and writes back what adaptation found.

**The recommender.** The user's profile ``p_u`` is the concatenation of their side features' embeddings (the item's
``p_i`` likewise); two embedding networks ``e_u = g_{theta_u}(p_u)`` and ``e_i = g_{theta_i}(p_i)`` (a hidden layer of
half the input width, LeakyReLU(0.1) after each layer) feed the recommendation network ``theta_r``,

    y_hat = w^T LeakyReLU(W_1 (M^u [e_u; e_i] + b_0) + b_1) + b_2,

whose first layer, the *memory layer* ``M^u``, is the user's own.

**Reading the memories** (per user, from the profile alone). The profile memory ``M_P [K, d_p]`` gives the
attention ``a_u = softmax_k cos(p_u, M_P[k])``. The fast-weight memory ``M_U`` (``K`` copies of ``theta_u``) gives the
personalised bias ``b_u = sum_k a_uk M_U[k]`` and the user network starts at ``theta_u - tau b_u``; the
preference memory ``M_UI [K, 2d, 2d]`` gives the memory layer's start ``M^u = sum_k a_uk M_UI[k]``.

**Local update.** ``K_in`` gradient steps at rate ``rho`` on the support loss over ``theta_u``, ``theta_i``,
``theta_r`` and ``M^u`` (:meth:`MAMO.default_adapt_filter`); the feature embeddings are global only.

**Writing the memories** (after each meta-step, never by a gradient; :func:`memory_write`). With ``theta_u^K`` and
``M^u_K`` the adapted values and ``L_Q`` the query loss,

    M_P  <- alpha a_u (x) p_u                       + (1 - alpha) M_P,
    M_U  <- beta  a_u (x) grad_{theta_u} L_Q(theta^K) + (1 - beta) M_U,
    M_UI <- gamma a_u (x) M^u_K                      + (1 - gamma) M_UI.

The paper writes after each user; a batch of ``T`` tasks writes once with the mean of ``a_t (x) x_t`` over its real
tasks, which is the paper's rule when ``T = 1``.

Choices where the paper leaves a detail open, with the authors' released code as the guide: ``K = 3`` slots,
``tau`` = 0.01, ``alpha`` = 0.5, ``beta`` = 0.05, ``gamma`` = 0.1, embeddings of width 100. The attention is the
paper's softmax of cosines (the released code passes them through a linear layer drawn afresh at every read, i.e.
a random one, which we do not copy). The released code draws ``M_UI`` from N(0, 1), which with 200 inputs gives
the memory layer outputs of scale 14; we draw it with the variance ``1 / (2d)`` of a LeCun-initialised layer.
``M_U`` is drawn from N(0, 0.05^2) and ``M_P`` from N(0, 1) as released. The output is a rating regressed
with the mean squared error (the released code classifies five rating levels); jaxrec scores MAE.

The memory layer's per-user weight is the parameter ``preference``: it is zero in the meta-parameters and adapted
from there, so the layer's weight ``preference + sum_k a_uk M_UI[k]`` starts at the memory read. Both it and the
memories are :data:`FROZEN` in meta-training (``resolve`` adds the pattern to ``frozen``); the memories change only
through :func:`memory_write`, which :class:`~jaxrec.MetaTrainer` runs after each step (``after_step``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.core.batch import TaskBatch, zero_padding
from jaxrec.core.features import FeatureSpec
from jaxrec.core.inner import InnerLoop, adapt
from jaxrec.core.losses import masked_mean
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
    spec_field,
    valid_ids,
)

__all__ = ["FROZEN", "MAMO", "memory_write"]

#: the memories and the memory layer's per-user weight: never moved by the outer optimiser
FROZEN = "^params/(memory_|preference$)"

#: the leaves of the user embedding network, ``theta_u`` (the fast-weight memory holds one copy per slot)
USER_NETWORK = ("user_kernel_0", "user_bias_0", "user_kernel_1", "user_bias_1")

_LOCAL_PREFIXES = ("user_kernel_", "user_bias_", "item_tower_", "rec_", "preference")


def _leaky(x: jax.Array) -> jax.Array:
    return nn.leaky_relu(x, negative_slope=0.1)


def _cosine(p: jax.Array, memory: jax.Array) -> jax.Array:
    """``cos(p, memory[k])`` for every slot ``k``: ``[..., K]``."""
    dot = jnp.einsum("...d,kd->...k", p, memory)
    norms = jnp.sqrt(jnp.sum(p * p, axis=-1, keepdims=True) + 1e-12) * jnp.sqrt(jnp.sum(memory * memory, -1) + 1e-12)
    return dot / norms


class MAMO(nn.Module):
    """MAMO's recommender with its memories (see the module docstring for the equations).

    ``model.apply(variables, rows)`` scores rows with each row's user read from the memories by that row's
    profile (every row of a task shares the user's features, so a task reads once).

    Attributes:
      spec: the feature spec. The user's side features are the profile; without any, every user has the same
        profile (a constant 1), so every user reads the same mixture of the memories.
      width: the width of every field embedding and of ``e_u`` and ``e_i``.
      use_ids: the ids embedded as fields (MAMO itself: none).
      memories: ``K``, the number of memory slots.
      tau: the scale of the personalised bias, ``theta_u - tau b_u``.
      profile_rate: ``alpha``, the write rate of the profile memory.
      fast_rate: ``beta``, the write rate of the fast-weight memory.
      preference_rate: ``gamma``, the write rate of the preference memory.
    """

    #: what meta-training must leave to :func:`memory_write` (``resolve`` adds it to ``frozen``)
    frozen_pattern = FROZEN

    spec: FeatureSpec = spec_field
    width: int = 100
    use_ids: Sequence[str] = ()
    memories: int = 3
    tau: float = 0.01
    profile_rate: float = 0.5
    fast_rate: float = 0.05
    preference_rate: float = 0.1

    def setup(self):
        spec, width = self.spec, self.width
        check_ids(spec, self.use_ids)
        self._user_fields = tuple(categorical_fields(spec, self.use_ids, sides=("user",)))
        self._user_multi = tuple(multi_hot_fields(spec, sides=("user",)))
        self._item_fields = tuple(categorical_fields(spec, self.use_ids, sides=("item",)))
        self._item_multi = tuple(multi_hot_fields(spec, sides=("item",)))
        if not self._item_fields and not self._item_multi:
            raise ValueError(
                "MAMO describes an item by its features: add item side features, or embed the item id as one "
                "(use_ids=('item',); on the command line --model-kwargs '{\"use_ids\": [\"item\"]}')"
            )
        if int(self.memories) < 1:
            raise ValueError(f"MAMO needs at least one memory slot, got memories={self.memories}")
        for name in ("profile_rate", "fast_rate", "preference_rate"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"MAMO's {name} is a moving-average rate in [0, 1], got {getattr(self, name)}")
        # dict entries are named <attribute>_<key>: embed_<row key> and dense_<row key>, the models' convention
        keys = self._user_fields + self._item_fields
        self.embed = {key: Embed(spec.categorical[key], width) for key in keys}
        self.dense = {key: MultiHotEmbed(width) for key in self._user_multi + self._item_multi}
        profile = max(width * (len(self._user_fields) + len(self._user_multi)), 1)
        item_profile = width * (len(self._item_fields) + len(self._item_multi))
        hidden = max(profile // 2, 1)
        shapes = dict(zip(USER_NETWORK, ((profile, hidden), (hidden,), (hidden, width), (width,)), strict=True))
        lecun, zeros = nn.initializers.lecun_normal(), nn.initializers.zeros
        self.user_network = {
            name: self.param(name, lecun if "kernel" in name else zeros, shape) for name, shape in shapes.items()
        }
        self.item_tower = [nn.Dense(max(item_profile // 2, 1)), nn.Dense(width)]
        slots = int(self.memories)
        self.memory_profile = self.param("memory_profile", nn.initializers.normal(1.0), (slots, profile))
        self.memory_fast = {
            name: self.param(f"memory_fast_{name}", nn.initializers.normal(0.05), (slots,) + shape)
            for name, shape in shapes.items()
        }
        joint = 2 * width
        self.memory_preference = self.param(
            "memory_preference", nn.initializers.normal(1.0 / math.sqrt(joint)), (slots, joint, joint)
        )
        self.preference = self.param("preference", zeros, (joint, joint))
        self.preference_bias = self.param("preference_bias", zeros, (joint,))
        self.rec_hidden = nn.Dense(width)
        self.rec_output = nn.Dense(1, bias_init=nn.initializers.constant(output_offset(spec)))

    def _fields(self, rows: Rows, categorical: Sequence[str], multi_hot: Sequence[str]) -> jax.Array:
        fields = [self.embed[k](valid_ids(rows[k], self.spec.categorical[k])) for k in categorical]
        fields += [self.dense[k](rows[k]) for k in multi_hot]
        if not fields:  # no user side feature: every user has the same profile, a constant 1
            return jnp.ones(num_rows(rows) + (1,), jnp.float32)
        return jnp.concatenate(fields, axis=-1)

    def profile(self, rows: Rows) -> jax.Array:
        """``p_u``: each row's user-feature embeddings, concatenated, ``[rows, d_p]``."""
        return self._fields(rows, self._user_fields, self._user_multi)

    def task_profile(self, rows: Rows, mask: jax.Array) -> jax.Array:
        """``p_u`` of a task, the mean over its true rows (all of them share the user's features), ``[d_p]``."""
        return masked_mean(self.profile(rows), mask)

    def attention(self, p: jax.Array) -> jax.Array:
        """``a_u = softmax_k cos(p_u, M_P[k])``, ``[..., K]``, for profiles ``[..., d_p]``."""
        return jax.nn.softmax(_cosine(p, self.memory_profile), axis=-1)

    def __call__(self, rows: Rows) -> jax.Array:
        """Score rows.

        Args:
          rows: the row dict.

        Returns:
          float32 ``[rows]`` scores.
        """
        p = self.profile(rows)
        a = self.attention(p)  # [rows, K]
        tau, net, fast = self.tau, self.user_network, self.memory_fast
        # (theta_u - tau sum_k a_k M_U[k]) applied to p, without forming a weight per row
        h = p @ net["user_kernel_0"] - tau * jnp.einsum("rk,rd,kdh->rh", a, p, fast["user_kernel_0"])
        h = _leaky(h + net["user_bias_0"] - tau * a @ fast["user_bias_0"])
        e_u = h @ net["user_kernel_1"] - tau * jnp.einsum("rk,rd,kdh->rh", a, h, fast["user_kernel_1"])
        e_u = _leaky(e_u + net["user_bias_1"] - tau * a @ fast["user_bias_1"])
        e_i = self._fields(rows, self._item_fields, self._item_multi)
        for layer in self.item_tower:
            e_i = _leaky(layer(e_i))
        x = jnp.concatenate([e_u, e_i], axis=-1)
        # the memory layer: (preference + sum_k a_k M_UI[k]) x + b_0
        z = x @ self.preference + jnp.einsum("rk,rd,kde->re", a, x, self.memory_preference) + self.preference_bias
        return self.rec_output(_leaky(self.rec_hidden(z)))[..., 0]

    @staticmethod
    def default_adapt_filter(path, leaf) -> bool:
        """Select the leaves of the local update: ``theta_u``, ``theta_i``, ``theta_r`` and the memory layer.

        Args:
          path: the parameter's key path.
          leaf: the parameter.

        Returns:
          Whether the parameter adapts per user (not the feature embeddings, not the memories).
        """
        names = path_names(path)
        return len(names) > 1 and names[1].startswith(_LOCAL_PREFIXES)

    def memory_write(self, inner: InnerLoop) -> Callable:
        """The write of the memories after a meta-step, :func:`memory_write` of this model."""
        return memory_write(self, inner)


def memory_write(model: MAMO, inner: InnerLoop) -> Callable:
    """MAMO's memory writes as the ``after_step`` of :class:`~jaxrec.MetaTrainer` (see the module docstring).

    Args:
      model: the :class:`MAMO` model.
      inner: the inner loop of the meta-step (its loss, steps and adapted leaves; the write adapts at first order:
        it reads values, not derivatives).

    Returns:
      ``write(params, new_params, batch, inner_lr) -> new_params``: ``new_params`` with the memories written
      from the batch's tasks adapted from ``params`` (the meta-parameters before the step). A batch without a
      real task (every query row padding) writes nothing.
    """
    first = inner.replace(order="first")
    query_loss = inner.query_loss_fn or inner.loss_fn

    def task_values(params, support, support_mask, query, query_mask, inner_lr):
        support, query = zero_padding(support, support_mask), zero_padding(query, query_mask)
        phi = adapt(params, support, support_mask, first, inner_lr=inner_lr)
        p = model.apply(params, support, support_mask, method=MAMO.task_profile)
        a = model.apply(params, p, method=MAMO.attention)
        grads = jax.grad(query_loss)(phi, query, query_mask)["params"]
        memory_layer = phi["params"]["preference"] + jnp.tensordot(a, params["params"]["memory_preference"], 1)
        return p, a, {name: grads[name] for name in USER_NETWORK}, memory_layer

    def write(params, new_params, batch: TaskBatch, inner_lr):
        per_task = jax.vmap(task_values, in_axes=(None, 0, 0, 0, 0, None))
        p, a, grads, memory_layer = per_task(
            params, batch.support, batch.support_mask, batch.query, batch.query_mask, inner_lr
        )
        real = jnp.any(batch.query_mask, axis=1)
        weights = a * (real / jnp.maximum(jnp.sum(real), 1))[:, None]  # [T, K]: a_t over the batch's mean
        old = params["params"]

        def ema(memory, values, rate):
            target = jnp.tensordot(weights, values, axes=([0], [0]))  # sum_t w_t a_t (x) x_t
            return jnp.where(jnp.any(real), rate * target + (1.0 - rate) * memory, memory)

        written = {"memory_profile": ema(old["memory_profile"], p, model.profile_rate)}
        for name in USER_NETWORK:
            written[f"memory_fast_{name}"] = ema(old[f"memory_fast_{name}"], grads[name], model.fast_rate)
        written["memory_preference"] = ema(old["memory_preference"], memory_layer, model.preference_rate)
        return {**new_params, "params": {**new_params["params"], **written}}

    return write
