"""TaNP: the task-adaptive neural process of Lin, Wu, Zhou, Pan, Cao and Wang, "Task-adaptive Neural Process for
User Cold-Start Recommendation", WWW 2021.

A user's support set ``C = {(x_i, y_i)}`` (``x_i`` the embedded user and item features of row ``i``, ``y_i`` its
target) is encoded, not fine-tuned. Two encoders read each pair ``[x_i, y_i]``:

* the *latent path*: ``r_i = h(x_i, y_i)`` (an MLP), pooled ``r_C = mean_i r_i``, and ``q(z | C) = N(mu(r_C),
  exp(v(r_C)))`` (``v`` the log-variance, ``exp(v / 2)`` in ``(0.1, 1)``);
* the *task identity*: ``t_i = g(x_i, y_i)``, ``t_C = mean_i t_i``, read against ``k`` meta-learned cluster
  centres ``M = [m_1 .. m_k]`` by a Student-t kernel (``tau`` its temperature),

      a_j = (1 + ||t_C - m_j|| / tau)^{-(tau + 1)/2} / sum_l (...),        o = t_C + a^T M.

The decoder scores a query row from ``[x, z]`` through layers whose hidden units are modulated by the task,
FiLM-style: ``h_l <- relu(gamma_l * (W_l h_{l-1} + b_l) + beta_l)`` with ``gamma_l = tanh(G_l o)`` and ``beta_l =
tanh(B_l o)``. Training maximises the neural-process bound on the query (target) set ``T``: the reconstruction
loss of ``T`` decoded with ``z`` from ``q(z | C u T)`` plus ``KL(q(z | C u T) || q(z | C))``; a new user is scored
with ``z`` from ``q(z | C)`` alone. Pooling by a mean makes the adaptation invariant to the order of the support
rows, and there is no gradient inner loop: :class:`jaxrec.core.solvers.Amortized` writes the pooled statistics of
the support set into the leaves ``context_r``, ``context_t`` and ``context_n``, from which the decoder reads
``z`` and ``o``.

Choices where the paper leaves a detail open or where jaxrec differs, each tested:

* ``x`` as the released code forms it (``side_layers``): the user's fields and the item's fields each go through
  their own layers, a linear map of the side's one-hot (or multi-hot) features to 32 units, ReLU, a dense layer of
  16, ReLU, and ``x`` is the two sides' outputs concatenated (a linear map of one-hot fields is the sum of one
  embedding per field, plus a bias); without ``side_layers``, ``x`` is every field's embedding concatenated;
* widths from the authors' released configuration: ``h``: 32-16-32, ``mu``/``v`` through a hidden layer of 32 to
  ``z`` of 32, ``g``: 32-32-16, ``k`` = 10 centres, ``tau`` = 1, decoder 32-32-16;
* ``z`` enters the decoder as the mean of its Gaussian (no reparameterised sample), in training and at test, so
  that scores are deterministic; the KL term still ties ``q(z | C)`` to ``q(z | C u T)`` because the standard
  deviation is bounded, ``sigma = 0.1 + 0.9 sigmoid(.)`` (as neural-process implementations commonly do): with
  only the mean decoded, an unbounded variance could grow until the KL vanished;
* the context and target sets are the task's support and query sets (the released code redraws a random
  context size per step);
* the released code's clustering regulariser (a DEC-style KL between the batch's soft assignments and their
  sharpened target, ``lambda`` = 1) couples the tasks of a batch; jaxrec's meta-objective is a mean of per-task
  losses, so it is not included: the centres are trained by the query loss alone;
* the norm in the kernel is ``sqrt(||.||^2 + 1e-12)``, whose derivative exists where a code meets a centre.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
    with_context,
)

__all__ = ["TaNP", "neural_process_loss"]

#: the leaves the support set is encoded into (the adapted set)
CONTEXT_LEAVES = ("context_r", "context_t", "context_n")


class _MLP(nn.Module):
    """Dense layers with ReLU between them (none after the last)."""

    widths: Sequence[int]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, width in enumerate(self.widths):
            x = nn.Dense(width, name=f"layer_{i}")(x)
            if i + 1 < len(self.widths):
                x = nn.relu(x)
        return x


class _Side(nn.Module):
    """One side's layers of ``x`` (``TaNP.side_layers``): ``relu`` of the summed field embeddings plus a bias, then
    Dense layers, each followed by ``relu``."""

    widths: Sequence[int]

    @nn.compact
    def __call__(self, summed: jax.Array) -> jax.Array:
        x = nn.relu(summed + self.param("bias", nn.initializers.zeros, summed.shape[-1:]))
        for i, width in enumerate(self.widths):
            x = nn.relu(nn.Dense(width, name=f"layer_{i}")(x))
        return x


class TaNP(nn.Module):
    """The task-adaptive neural process (Lin et al., WWW 2021); see the module docstring for the equations.

    ``model.apply(variables, rows)`` scores rows with the support statistics held in the ``context_*`` leaves
    (zeros: the prior of a user with no support rows); :func:`support_encoder` computes them from a support set.

    Attributes:
      spec: the feature spec (its ``target`` is the ``y`` the encoders read).
      width: the width of every field embedding.
      use_ids: the ids embedded as fields (TaNP itself: none).
      side_layers: empty: ``x`` is the field embeddings concatenated; else each side (user, item) sums its field
        embeddings, adds a bias, applies ReLU and then Dense layers of these widths with ReLU (the released code:
        ``width`` 32 and ``side_layers`` (16,)), and ``x`` is the two sides concatenated.
      encoder: the widths of ``h`` (the last is that of ``r_i``).
      latent_hidden: the hidden width between ``r_C`` and ``(mu, v)``.
      latent: the width of ``z``.
      task_encoder: the widths of ``g`` (the last is that of ``t_i`` and of the centres).
      clusters: ``k``, the number of centres.
      temperature: ``tau``.
      decoder: the widths of the FiLM-modulated decoder layers.
    """

    spec: FeatureSpec = spec_field
    width: int = 32
    use_ids: Sequence[str] = ()
    side_layers: Sequence[int] = ()
    encoder: Sequence[int] = (32, 16, 32)
    latent_hidden: int = 32
    latent: int = 32
    task_encoder: Sequence[int] = (32, 32, 16)
    clusters: int = 10
    temperature: float = 1.0
    decoder: Sequence[int] = (32, 32, 16)

    def setup(self):
        spec = self.spec
        check_ids(spec, self.use_ids)
        self._categorical = tuple(categorical_fields(spec, self.use_ids))
        self._multi_hot = tuple(multi_hot_fields(spec))
        if not self._categorical and not self._multi_hot:
            raise ValueError("TaNP needs at least one field: add side features to the spec or ids to use_ids")
        # dict entries are named <attribute>_<key>: embed_<row key> and dense_<row key>, the models' convention
        self.embed = {key: Embed(spec.categorical[key], self.width) for key in self._categorical}
        self.dense = {key: MultiHotEmbed(self.width) for key in self._multi_hot}
        if self.side_layers:
            self.side = {side: _Side(tuple(self.side_layers)) for side in ("user", "item")}
            self._sides = {
                side: (tuple(categorical_fields(spec, self.use_ids, (side,))), tuple(multi_hot_fields(spec, (side,))))
                for side in ("user", "item")
            }
        self.pair_encoder = _MLP(tuple(self.encoder))
        self.latent_in = nn.Dense(self.latent_hidden)
        self.latent_mean = nn.Dense(self.latent)
        self.latent_logvar = nn.Dense(self.latent)
        self.pair_task_encoder = _MLP(tuple(self.task_encoder))
        self.centres = self.param("centres", nn.initializers.xavier_uniform(), (self.clusters, self.task_encoder[-1]))
        self.decoder_layers = [nn.Dense(width) for width in self.decoder]
        self.film_gamma = [nn.Dense(width, use_bias=False) for width in self.decoder]
        self.film_beta = [nn.Dense(width, use_bias=False) for width in self.decoder]
        self.output = nn.Dense(1, bias_init=nn.initializers.constant(output_offset(spec)))
        zeros = nn.initializers.zeros
        self.context_r = self.param("context_r", zeros, (self.encoder[-1],))
        self.context_t = self.param("context_t", zeros, (self.task_encoder[-1],))
        self.context_n = self.param("context_n", zeros, ())

    def features(self, rows: Rows) -> jax.Array:
        """``x``: the field embeddings of each row, concatenated, ``[rows, fields * width]``; with
        ``side_layers``, each side's layers over its summed fields, concatenated, ``[rows, 2 * side_layers[-1]]``."""

        def embedded(categorical, multi_hot):
            fields = [self.embed[k](valid_ids(rows[k], self.spec.categorical[k])) for k in categorical]
            return fields + [self.dense[k](rows[k]) for k in multi_hot]

        if not self.side_layers:
            return jnp.concatenate(embedded(self._categorical, self._multi_hot), axis=-1)
        sides = {side: embedded(*self._sides[side]) for side in ("user", "item")}
        like = next(fields[0] for fields in sides.values() if fields)  # the shape and precision of an embedding
        summed = {
            side: sum(fields[1:], fields[0]) if fields else jnp.zeros_like(like) for side, fields in sides.items()
        }
        return jnp.concatenate([self.side[side](summed[side]) for side in ("user", "item")], axis=-1)

    def _pairs(self, rows: Rows) -> jax.Array:
        x = self.features(rows)
        y = jnp.asarray(rows[self.spec.target], x.dtype)[:, None]
        return jnp.concatenate([x, y], axis=-1)

    def encode_support(self, rows: Rows, mask: jax.Array) -> dict[str, jax.Array]:
        """The support set's statistics: ``{"context_r": r_C, "context_t": t_C, "context_n": |C|}``.

        Args:
          rows: the support rows (padding rows zeroed).
          mask: bool ``[rows]``; false rows are padding.

        Returns:
          The values of the ``context_*`` leaves (means over the true rows; zeros for an empty set).
        """
        pairs = self._pairs(rows)
        r = masked_mean(self.pair_encoder(pairs), mask)
        t = masked_mean(self.pair_task_encoder(pairs), mask)
        return {"context_r": r, "context_t": t, "context_n": jnp.sum(mask).astype(r.dtype)}

    def latent_sums(self, rows: Rows, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(sum_i r_i, count)`` over the true rows of a set (to pool ``C u T`` from ``r_C`` and ``T``)."""
        codes = self.pair_encoder(self._pairs(rows))
        return jnp.sum(jnp.where(mask[:, None], codes, 0.0), axis=0), jnp.sum(mask).astype(codes.dtype)

    def gaussian(self, r: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(mu(r), v(r))``: the mean and log-variance of ``q(z | .)`` from a pooled ``r``.

        The standard deviation is bounded, ``sigma = 0.1 + 0.9 sigmoid(.)`` in ``(0.1, 1)``: the decoder reads the
        mean of ``z`` only, so an unbounded variance would let training inflate it until the KL term vanishes.
        """
        hidden = nn.relu(self.latent_in(r))
        sigma = 0.1 + 0.9 * nn.sigmoid(self.latent_logvar(hidden))
        return self.latent_mean(hidden), 2.0 * jnp.log(sigma)

    def task_code(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(a, o)``: the soft assignment of a pooled task code to the centres, and the code read from them."""
        distance = jnp.sqrt(jnp.sum(jnp.square(t[None, :] - self.centres), axis=-1) + 1e-12)
        kernel = jnp.power(distance / self.temperature + 1.0, -(self.temperature + 1.0) / 2.0)
        assignment = kernel / jnp.sum(kernel)
        return assignment, t + assignment @ self.centres

    def __call__(self, rows: Rows) -> jax.Array:
        """Score rows with the support statistics in the ``context_*`` leaves.

        Args:
          rows: the row dict.

        Returns:
          float32 ``[rows]`` scores.
        """
        if self.is_initializing():  # the encoders are not on the scoring path: create their parameters here
            self.encode_support(rows, jnp.ones(jnp.shape(rows[self.spec.target])[:1], bool))
        x = self.features(rows)
        z, _ = self.gaussian(self.context_r)
        _, code = self.task_code(self.context_t)
        h = jnp.concatenate([x, jnp.broadcast_to(z, x.shape[:-1] + z.shape)], axis=-1)
        for layer, gamma, beta in zip(self.decoder_layers, self.film_gamma, self.film_beta, strict=True):
            h = nn.relu(layer(h) * jnp.tanh(gamma(code)) + jnp.tanh(beta(code)))
        return self.output(h)[..., 0]

    default_adapt_filter = context_filter(CONTEXT_LEAVES)

    def query_loss(self, reconstruction: Callable) -> Callable:
        """The meta-training loss of the query set: :func:`neural_process_loss` of ``reconstruction``."""
        return neural_process_loss(self, reconstruction)


def neural_process_loss(model: TaNP, reconstruction: Callable, kl_weight: float = 1.0) -> Callable:
    """TaNP's query loss: ``reconstruction`` of the query rows decoded with ``z`` from ``q(z | C u T)``, plus
    ``kl_weight * KL(q(z | C u T) || q(z | C))``.

    ``params`` carry the support statistics (``context_r = r_C``, ``context_n = |C|``, as
    :class:`~jaxrec.models.common.support_encoder` writes them); the pooled ``r`` of ``C u T`` is ``(|C| r_C +
    sum_{i in T} r_i) / (|C| + |T|)``, the mean over both sets. For Gaussians with means ``mu_1, mu_0`` and
    log-variances ``v_1, v_0``,

        KL = 1/2 sum_d [exp(v_1 - v_0) + (mu_1 - mu_0)^2 exp(-v_0) - 1 + v_0 - v_1].

    Args:
      model: the :class:`TaNP` module.
      reconstruction: ``loss(params, rows, mask) -> scalar`` on the model's scores (e.g.
        :func:`jaxrec.mse_loss` of ``model.apply``).
      kl_weight: the weight of the KL term (1 in the paper's bound).

    Returns:
      ``loss(params, rows, mask) -> scalar``.
    """

    def loss(params, rows, mask):
        context = params["params"]
        target_sum, target_n = model.apply(params, rows, mask, method=TaNP.latent_sums)
        n = context["context_n"]
        pooled = (n * context["context_r"] + target_sum) / jnp.maximum(n + target_n, 1.0)
        mu_0, v_0 = model.apply(params, context["context_r"], method=TaNP.gaussian)
        mu_1, v_1 = model.apply(params, pooled, method=TaNP.gaussian)
        kl = 0.5 * jnp.sum(jnp.exp(v_1 - v_0) + jnp.square(mu_1 - mu_0) * jnp.exp(-v_0) - 1.0 + v_0 - v_1)
        return reconstruction(with_context(params, {"context_r": pooled}), rows, mask) + kl_weight * kl

    return loss
