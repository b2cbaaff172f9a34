"""Recommendation models for meta-learned cold-start recommendation.

Every model is a pure Flax (``flax.linen``) module that reads a dict of rows following the row-key convention of
:mod:`jaxrec.features` and returns one score per row::

    variables = init_params(model, spec, key)        # {"params": ...}
    scores = model.apply(variables, rows)            # float32 [rows]

so ``model.apply`` is directly the ``apply_fn(params, rows) -> scores`` that :func:`jaxrec.mse_loss`,
:func:`jaxrec.bce_loss` and :func:`jaxrec.bpr_loss` expect (see :func:`default_loss`). Auxiliary terms
(e.g. the iMAML proximal term :func:`jaxrec.l2_to_init`) are added with :func:`jaxrec.with_auxiliary`.

Conventions shared by all models:

* **Output offset.** For explicit targets (``spec.rating_range`` set) the final bias is initialised at the middle
  of the rating range, so an untrained model predicts ~3 on a 1..5 scale instead of 0; the meta-learner then
  spends its steps on preferences, not on the mean.
* **Ids.** Slot 0 of every vocabulary is the OOV / unknown / padding row. Ids outside ``[0, vocab)`` are mapped
  to slot 0 too (``jnp.take`` would otherwise return NaN rows).
* **Embedding names.** Every ``nn.Embed`` is named ``[<role>_]embed_<row key>`` (e.g. ``embed_item``,
  ``embed_user_age``, ``gmf_embed_user``, ``bias_embed_item``), so :func:`embedding_tables` can tell which row
  key indexes each table.
  Multi-hot fields go through a bias-free dense layer named ``dense_<row key>``.
* **Adaptation.** Each model class has a static ``default_adapt_filter(path, leaf) -> bool`` selecting the
  parameters adapted per task (the "local update" of MeLU); decision layers live in a submodule named ``head``.
  :func:`adapt_filter` turns ``"all"`` / ``"head"`` / ``"default"`` / a regex into such a predicate.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.batch import TaskBatch
from jaxrec.features import FeatureSpec
from jaxrec.losses import LossFn, bce_loss, mse_loss

__all__ = [
    "MatrixFactorization",
    "LinearModel",
    "FactorizationMachine",
    "MeLU",
    "NeuMF",
    "GRURecommender",
    "MODELS",
    "create",
    "init_params",
    "default_loss",
    "path_names",
    "adapt_filter",
    "adapt_mask",
    "embedding_tables",
    "reference_spec",
    "synthetic_rows",
    "synthetic_task_batch",
]

Rows = Mapping[str, jax.Array]
AdaptFilter = Callable[[Any, Any], bool]

# A FeatureSpec holds dicts, so it is unhashable; hash=False keeps the (hashable) module usable as a jit key.
_spec_field = dataclasses.field(hash=False)
_small_normal = nn.initializers.normal(stddev=0.1)


# ----------------------------------------------------------------------------------------------------------------
# helpers


def _output_offset(spec: FeatureSpec) -> float:
    """Middle of the rating range for explicit targets, 0 for implicit (logit) targets."""
    if spec.rating_range is None or spec.target == "label":
        return 0.0
    low, high = spec.rating_range
    return 0.5 * (float(low) + float(high))


def _valid_ids(ids: jax.Array, vocab: int) -> jax.Array:
    """Map ids outside ``[0, vocab)`` to the OOV slot 0."""
    ids = jnp.asarray(ids).astype(jnp.int32)
    return jnp.where((ids >= 0) & (ids < vocab), ids, 0)


def _categorical_fields(spec: FeatureSpec, use_ids: Sequence[str], sides: Sequence[str] = ("user", "item")):
    """Categorical row keys a model reads, grouped user side then item side: the id (if in ``use_ids``), then
    the ``<side>_<field>`` side features in sorted order."""
    fields = []
    for side in sides:
        if side in use_ids and side in spec.categorical:
            fields.append(side)
        fields.extend(spec.fields(f"{side}_"))
    return fields


def _multi_hot_fields(spec: FeatureSpec, sides: Sequence[str] = ("user", "item")):
    return [key for side in sides for key in spec.multi_hot_fields(f"{side}_")]


def _num_rows(rows: Rows) -> tuple[int]:
    """``(rows,)``: the leading axis shared by every array of ``rows``."""
    return (jnp.shape(rows["item"] if "item" in rows else next(iter(rows.values())))[0],)


def _check_ids(spec: FeatureSpec, use_ids: Sequence[str]) -> None:
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


def _under(path, name: str) -> bool:
    return name in path_names(path)


# ----------------------------------------------------------------------------------------------------------------
# models


class MatrixFactorization(nn.Module):
    """Biased matrix factorisation (Koren, Bell & Volinsky 2009)::

        r_hat(u, i) = mu + b_u + b_i + <p_u, q_i>

    ``mu`` starts at the middle of the rating range; ``b`` tables start at 0 and ``p, q ~ N(0, 0.1^2)``.
    Parameters: ``global_bias``, ``bias_embed_{user,item}`` ``[vocab, 1]``, ``embed_{user,item}``
    ``[vocab, embed]``.

    Default adapt filter: the **user side** (``b_u`` and ``p_u``). A task is one user, so the user row is the only
    part of MF that is specific to the task; for a cold-start user (id 0) adapting it learns a personal vector
    starting from the meta-learned OOV row, with item factors shared across users.
    """

    spec: FeatureSpec = _spec_field
    embed: int = 32

    @nn.compact
    def __call__(self, rows: Rows) -> jax.Array:
        spec = self.spec
        user = _valid_ids(rows["user"], spec.categorical["user"])
        item = _valid_ids(rows["item"], spec.categorical["item"])
        zeros = nn.initializers.zeros_init()
        user_bias = nn.Embed(spec.categorical["user"], 1, embedding_init=zeros, name="bias_embed_user")
        item_bias = nn.Embed(spec.categorical["item"], 1, embedding_init=zeros, name="bias_embed_item")
        user_factors = nn.Embed(spec.categorical["user"], self.embed, embedding_init=_small_normal, name="embed_user")
        item_factors = nn.Embed(spec.categorical["item"], self.embed, embedding_init=_small_normal, name="embed_item")
        global_bias = self.param("global_bias", nn.initializers.constant(_output_offset(spec)), ())
        dot = jnp.sum(user_factors(user) * item_factors(item), axis=-1)
        return global_bias + user_bias(user)[..., 0] + item_bias(item)[..., 0] + dot

    @staticmethod
    def default_adapt_filter(path, leaf) -> bool:
        names = path_names(path)
        return any(name in ("embed_user", "bias_embed_user") for name in names)


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
    """

    spec: FeatureSpec = _spec_field
    use_ids: Sequence[str] = ("user", "item")

    @nn.compact
    def __call__(self, rows: Rows) -> jax.Array:
        spec = self.spec
        _check_ids(spec, self.use_ids)
        zeros = nn.initializers.zeros_init()
        score = self.param("bias", nn.initializers.constant(_output_offset(spec)), ())
        for key in _categorical_fields(spec, self.use_ids):
            vocab = spec.categorical[key]
            score = (
                score
                + nn.Embed(vocab, 1, embedding_init=zeros, name=f"embed_{key}")(_valid_ids(rows[key], vocab))[..., 0]
            )
        for key in _multi_hot_fields(spec):
            score = score + MultiHotEmbed(1, kernel_init=zeros, name=f"dense_{key}")(rows[key])[..., 0]
        return jnp.broadcast_to(score, _num_rows(rows)).astype(jnp.float32)

    @staticmethod
    def default_adapt_filter(path, leaf) -> bool:
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
    """

    spec: FeatureSpec = _spec_field
    embed: int = 16
    use_ids: Sequence[str] = ("user", "item")

    @nn.compact
    def __call__(self, rows: Rows) -> jax.Array:
        spec = self.spec
        _check_ids(spec, self.use_ids)
        linear = LinearModel(spec, use_ids=tuple(self.use_ids), name="linear")(rows)
        # LinearModel's own bias is the FM w_0 (kept under linear/bias).
        total, total_sq = 0.0, 0.0
        for key in _categorical_fields(spec, self.use_ids):
            vocab = spec.categorical[key]
            v = nn.Embed(vocab, self.embed, embedding_init=_small_normal, name=f"factors_embed_{key}")(
                _valid_ids(rows[key], vocab)
            )
            total, total_sq = total + v, total_sq + jnp.square(v)
        for key in _multi_hot_fields(spec):
            v, v_sq = MultiHotEmbed(self.embed, kernel_init=_small_normal, name=f"factors_dense_{key}")(
                rows[key], squared=True
            )
            total, total_sq = total + v, total_sq + v_sq
        pairwise = 0.5 * jnp.sum(jnp.square(total) - total_sq, axis=-1)
        return linear + pairwise

    @staticmethod
    def default_adapt_filter(path, leaf) -> bool:
        names = path_names(path)
        if "linear" in names:
            return LinearModel.default_adapt_filter(path, leaf)
        return any(name.startswith(("factors_embed_user", "factors_dense_user_")) for name in names)


class MeLU(nn.Module):
    """MeLU (Lee et al., KDD 2019, "MeLU: Meta-Learned User Preference Estimator for Cold-Start Recommendation").

    * Embedding layer: one ``nn.Embed(vocab, embed)`` per categorical field (``embed_<key>``), the ids named in
      ``use_ids`` included (MeLU itself uses features only: ``use_ids=()``), and a bias-free
      ``dense_<key>: [width, embed]`` per multi-hot field (e.g. genres).
    * Feature-interaction layer (``interaction``): ``None`` concatenates the field embeddings ``e_1..e_n``;
      ``"fm"`` also appends the bi-interaction pooling of Neural FM (He & Chua 2017)
      ``1/2 [(sum_f e_f)^2 - sum_f e_f^2]`` (the FM pairwise term kept per dimension; no parameters).
    * Prediction MLP ``head``: ``hidden`` Dense+ReLU layers and ``Dense(1)`` (bias starting mid-range).
    * ``item_bias`` (default off): an additive per-item term ``b_i`` read by the item id from
      ``bias_embed_item: nn.Embed(item vocab, 1)`` (starting at 0), ``s(u, i) = head(x) + b_i``. It is outside ``head``,
      so with the default adapt filter it is meta-learned (and pretrained) but not adapted, and the head's output
      bias plays the user offset ``b_u`` of the classical bias model ``mu + b_u + b_i``.
    * ``projection`` (default off): a bias-free linear map between the last hidden layer and the output
      (:class:`Head`), so that a Newton step on ``head/output`` has a meta-learned full-covariance prior.

    The reference workload of the benchmarks is ``MeLU(reference_spec(V), embed=32, hidden=(64, 64),
    use_ids=("item",), interaction=None)``: 6 embeddings + genres of width 32 -> Dense(64) relu -> Dense(64) relu ->
    Dense(1), trained with MSE.

    Default adapt filter: the decision layers (``head``), the MeLU local update; embeddings are meta-learned only.
    """

    spec: FeatureSpec = _spec_field
    embed: int = 32
    hidden: Sequence[int] = (64, 64)
    use_ids: Sequence[str] = ()
    interaction: str | None = "fm"
    item_bias: bool = False
    projection: bool = False

    @nn.compact
    def __call__(self, rows: Rows) -> jax.Array:
        spec = self.spec
        _check_ids(spec, self.use_ids)
        if self.item_bias and "item" not in spec.categorical:
            raise ValueError("item_bias needs an item id in the spec")
        if self.interaction not in (None, "fm"):
            raise ValueError(f"interaction must be None or 'fm', got {self.interaction!r}")
        fields = []
        for key in _categorical_fields(spec, self.use_ids):
            vocab = spec.categorical[key]
            fields.append(nn.Embed(vocab, self.embed, name=f"embed_{key}")(_valid_ids(rows[key], vocab)))
        for key in _multi_hot_fields(spec):
            fields.append(MultiHotEmbed(self.embed, name=f"dense_{key}")(rows[key]))
        if not fields:
            raise ValueError("MeLU needs at least one field: add side features to the spec or ids to use_ids")
        features = list(fields)
        if self.interaction == "fm":
            stacked = jnp.stack(fields, axis=-2)
            features.append(0.5 * (jnp.square(jnp.sum(stacked, -2)) - jnp.sum(jnp.square(stacked), -2)))
        x = jnp.concatenate(features, axis=-1)
        score = Head(tuple(self.hidden), _output_offset(spec), self.projection, name="head")(x)
        if self.item_bias:
            vocab = spec.categorical["item"]
            table = nn.Embed(vocab, 1, embedding_init=nn.initializers.zeros, name="bias_embed_item")
            score = score + table(_valid_ids(rows["item"], vocab))[..., 0]
        return score

    @staticmethod
    def default_adapt_filter(path, leaf) -> bool:
        return _under(path, "head")


class NeuMF(nn.Module):
    """Neural matrix factorisation (He et al., WWW 2017, "Neural Collaborative Filtering").

    GMF branch ``p_u * q_i`` (``gmf_embed_{user,item}``) and MLP branch ``MLP([p'_u, q'_i])``
    (``mlp_embed_{user,item}``, tower ``head/hidden_*``) fused by a final dense layer::

        s(u, i) = h^T [p_u * q_i ; MLP([p'_u ; q'_i])] + b

    (``head/output``; ``b`` starts mid-range for explicit ratings, so the model also fits explicit data with MSE;
    for implicit labels the score is a logit). Default adapt filter: the MLP tower and the fusion layer (``head``).
    """

    spec: FeatureSpec = _spec_field
    embed: int = 16
    hidden: Sequence[int] = (32, 16)

    @nn.compact
    def __call__(self, rows: Rows) -> jax.Array:
        spec = self.spec
        n_users, n_items = spec.categorical["user"], spec.categorical["item"]
        user, item = _valid_ids(rows["user"], n_users), _valid_ids(rows["item"], n_items)
        gmf = nn.Embed(n_users, self.embed, embedding_init=_small_normal, name="gmf_embed_user")(user) * nn.Embed(
            n_items, self.embed, embedding_init=_small_normal, name="gmf_embed_item"
        )(item)
        mlp_in = jnp.concatenate(
            [
                nn.Embed(n_users, self.embed, embedding_init=_small_normal, name="mlp_embed_user")(user),
                nn.Embed(n_items, self.embed, embedding_init=_small_normal, name="mlp_embed_item")(item),
            ],
            axis=-1,
        )
        return _NeuMFHead(tuple(self.hidden), _output_offset(spec), name="head")(gmf, mlp_in)

    @staticmethod
    def default_adapt_filter(path, leaf) -> bool:
        return _under(path, "head")


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
    """

    spec: FeatureSpec = _spec_field
    embed: int = 32
    hidden_state: int = 32
    hidden: Sequence[int] = (32,)

    @nn.compact
    def __call__(self, rows: Rows) -> jax.Array:
        spec = self.spec
        if spec.history <= 0:
            raise ValueError("GRURecommender needs spec.history > 0 (rows with history_item / history_rating)")
        n_items = spec.categorical["item"]
        history = _valid_ids(rows["history_item"], n_items)  # [rows, L]
        mask = history > 0
        if spec.rating_range is not None:
            low, high = spec.rating_range
            centre, scale = 0.5 * (low + high), max(0.5 * (high - low), 1e-6)
        else:
            centre, scale = 0.0, 1.0
        rating = jnp.where(mask, (rows["history_rating"].astype(jnp.float32) - centre) / scale, 0.0)
        steps = jnp.concatenate(
            [nn.Embed(n_items, self.embed, name="embed_history_item")(history), rating[..., None]], axis=-1
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
        target = nn.Embed(n_items, self.embed, name="embed_item")(_valid_ids(rows["item"], n_items))
        return Head(tuple(self.hidden), _output_offset(spec), name="head")(jnp.concatenate([state, target], -1))

    @staticmethod
    def default_adapt_filter(path, leaf) -> bool:
        return _under(path, "head")


# ----------------------------------------------------------------------------------------------------------------
# registry, initialisation, losses

MODELS: dict[str, type[nn.Module]] = {
    "mf": MatrixFactorization,
    "linear": LinearModel,
    "fm": FactorizationMachine,
    "melu": MeLU,
    "neumf": NeuMF,
    "gru": GRURecommender,
}


def create(name: str, spec: FeatureSpec, **kwargs) -> nn.Module:
    """The model registered as ``name`` (one of :data:`MODELS`) for ``spec``; ``kwargs`` go to its constructor."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}") from None
    return cls(spec=spec, **kwargs)


def init_params(model: nn.Module, spec: FeatureSpec, key: jax.Array) -> dict:
    """``model.init`` on two synthetic rows of ``spec``: the variables ``{"params": ...}`` for ``model.apply``."""
    data_key, param_key = jax.random.split(key)
    return jax.jit(model.init)(param_key, synthetic_rows(spec, 2, data_key))


def default_loss(model: nn.Module) -> LossFn:
    """MSE on ``spec.target`` for explicit specs (``rating_range`` set), BCE on logits otherwise."""
    spec = model.spec
    if spec.rating_range is not None and spec.target != "label":
        return mse_loss(model.apply, spec.target)
    return bce_loss(model.apply, spec.target)


# ----------------------------------------------------------------------------------------------------------------
# parameter paths, adapt filters, embedding tables


def path_names(path) -> tuple[str, ...]:
    """A key path of ``jax.tree_util.tree_flatten_with_path`` as plain strings, e.g.
    ``("params", "head", "output", "kernel")``."""
    names = []
    for entry in path:
        if isinstance(entry, jax.tree_util.DictKey):
            names.append(str(entry.key))
        elif isinstance(entry, jax.tree_util.GetAttrKey):
            names.append(str(entry.name))
        elif isinstance(entry, jax.tree_util.SequenceKey):
            names.append(str(entry.idx))
        elif isinstance(entry, jax.tree_util.FlattenedIndexKey):
            names.append(str(entry.key))
        else:
            names.append(str(entry))
    return tuple(names)


def adapt_filter(spec: str | AdaptFilter | None, model: nn.Module | type[nn.Module] | None = None) -> AdaptFilter:
    """A predicate ``(path, leaf) -> bool`` choosing the parameters adapted per task.

    ``spec`` is one of: ``"all"``; ``"head"`` (everything under a module named ``head``: the decision layers of
    MeLU / NeuMF / GRU; MF, linear and FM have no head); ``"default"`` or ``None`` (``model.default_adapt_filter``,
    needs ``model``); a callable (returned as is); otherwise a regex searched in the ``/``-joined path, e.g.
    ``"head/output"`` or ``"embed_user"``.
    """
    if callable(spec):
        return spec
    if spec is None or spec == "default":
        if model is None:
            raise ValueError("adapt_filter('default') needs the model whose default_adapt_filter to use")
        return model.default_adapt_filter
    if spec == "all":
        return lambda path, leaf: True
    if spec == "head":
        return lambda path, leaf: _under(path, "head")
    if not isinstance(spec, str):
        raise TypeError(f"adapt filter must be a string or a callable, got {type(spec).__name__}")
    pattern = re.compile(spec)
    return lambda path, leaf: pattern.search("/".join(path_names(path))) is not None


def adapt_mask(params, predicate: AdaptFilter):
    """Pytree of bools (same structure as ``params``), e.g. for ``optax.masked``; raises if nothing is selected."""
    mask = jax.tree_util.tree_map_with_path(lambda path, leaf: bool(predicate(path, leaf)), params)
    if not any(jax.tree.leaves(mask)):
        raise ValueError("adapt filter selects no parameter")
    return mask


def embedding_tables(params) -> dict[tuple[str, ...], str]:
    """For each ``nn.Embed`` table, its parameter path -> the row key whose ids index it.

    Tables are named ``[<role>_]embed_<row key>``, e.g. ``("params", "embed_item", "embedding") -> "item"``,
    ``("params", "gmf_embed_user", "embedding") -> "user"``,
    ``("params", "embed_history_item", "embedding") -> "history_item"`` (ids ``[rows, L]``).
    """
    tables = {}
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = path_names(path)
        if len(names) >= 2 and names[-1] == "embedding" and "embed_" in names[-2]:
            tables[names] = names[-2].split("embed_", 1)[1]
    return tables


# ----------------------------------------------------------------------------------------------------------------
# reference workload and synthetic data


def reference_spec(item_vocab: int = 1700) -> FeatureSpec:
    """The FeatureSpec of the benchmark reference workload (MovieLens-1M-like MeLU)."""
    return FeatureSpec(
        categorical={
            "user": 1,
            "item": int(item_vocab),
            "user_gender": 2,
            "user_age": 7,
            "user_occupation": 21,
            "user_zip": 100,
            "item_year": 8,
        },
        multi_hot={"item_genres": 19},
        target="rating",
        rating_range=(1.0, 5.0),
    )


def _user_side(key: str) -> bool:
    return key == "user" or key.startswith("user_") or key.startswith("history_")


def _host_rng(key) -> np.random.Generator:
    """A NumPy generator seeded by a JAX key (typed or raw uint32), so synthetic data costs no compilation."""
    if jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(key, dtype=np.uint32).ravel().tolist())


def _host_rows(spec: FeatureSpec, rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, vocab in sorted(spec.categorical.items()):
        out[name] = rng.integers(0, vocab, rows, dtype=np.int32)
    for name, width in sorted(spec.multi_hot.items()):
        out[name] = (rng.random((rows, width)) < 0.2).astype(np.float32)
    low, high = spec.rating_range if spec.rating_range is not None else (1.0, 5.0)
    if spec.target == "label":
        out["label"] = (rng.random(rows) < 0.5).astype(np.float32)
        out["neg_item"] = rng.integers(0, spec.categorical["item"], rows, dtype=np.int32)
    else:
        out[spec.target] = rng.integers(int(low), int(high) + 1, rows).astype(np.float32)
    if spec.history > 0:
        length = spec.history
        real = np.arange(length)[None, :] < rng.integers(0, length + 1, (rows, 1))
        items = rng.integers(1, max(spec.categorical["item"], 2), (rows, length), dtype=np.int32)
        ratings = rng.integers(int(low), int(high) + 1, (rows, length))
        out["history_item"] = np.where(real, items, 0).astype(np.int32)
        out["history_rating"] = np.where(real, ratings, 0).astype(np.float32)
    return out


def synthetic_rows(spec: FeatureSpec, rows: int, key: jax.Array) -> dict[str, jax.Array]:
    """``rows`` random valid rows of ``spec``: ids uniform over the whole vocabulary (OOV slot 0 included),
    multi-hot bits with probability 0.2, integer ratings in ``spec.rating_range`` (default 1..5), 0/1 labels
    with a ``neg_item`` for implicit specs, and right-padded histories when ``spec.history > 0``.

    Generated on the host with NumPy seeded by ``key`` (deterministic; ``key`` must be concrete, not traced).
    """
    return {name: jnp.asarray(value) for name, value in _host_rows(spec, rows, _host_rng(key)).items()}


def synthetic_task_batch(
    spec: FeatureSpec, tasks: int, support: int, query: int, key: jax.Array, padded: bool = True
) -> TaskBatch:
    """A random :class:`jaxrec.TaskBatch` of ``tasks`` users with ``support`` / ``query`` rows each.

    All rows of a task share the user-side keys (``user``, ``user_*``, ``history_*``), as in real data. With
    ``padded`` each task keeps a random number (at least 1) of its rows and masks the rest; otherwise every row is
    real. ``task_id`` is ``arange(tasks)``. Host-side, like :func:`synthetic_rows`.
    """
    rng = _host_rng(key)
    per_task = support + query
    rows = _host_rows(spec, tasks * per_task, rng)
    users = _host_rows(spec, tasks, rng)
    rows = {name: value.reshape((tasks, per_task) + value.shape[1:]) for name, value in rows.items()}
    for name in rows:
        if _user_side(name):
            rows[name] = np.broadcast_to(users[name][:, None], rows[name].shape)

    def mask(size):
        if not padded:
            return np.ones((tasks, size), bool)
        return np.arange(size)[None, :] < rng.integers(1, size + 1, (tasks, 1))

    return TaskBatch(
        support={name: jnp.asarray(value[:, :support]) for name, value in rows.items()},
        query={name: jnp.asarray(value[:, support:]) for name, value in rows.items()},
        support_mask=jnp.asarray(mask(support)),
        query_mask=jnp.asarray(mask(query)),
        task_id=jnp.asarray(np.arange(tasks, dtype=np.int32)),
    )
