"""Recommendation models for meta-learned cold-start recommendation.

Every model is a pure Flax (``flax.linen``) module that reads a dict of rows following the row-key convention of
:mod:`jaxrec.core.features` and returns one score per row::

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
  ``embed_user_age``, ``gmf_embed_user``, ``bias_embed_item``), so :func:`jaxrec.embedding_tables` can tell which row
  key indexes each table.
  Multi-hot fields go through a bias-free dense layer named ``dense_<row key>``.
* **Adaptation.** Each model class has a static ``default_adapt_filter(path, leaf) -> bool`` selecting the
  parameters adapted per task (the "local update" of MeLU); decision layers live in a submodule named ``head``.
  :func:`jaxrec.core.params.adapt_filter` turns ``"all"`` / ``"head"`` / ``"default"`` / a regex into such a predicate.

A model of one's own joins them with :func:`register` (the protocol it follows is there), after which a config
names it and every harness builds it.
"""

from jaxrec.core.params import adapt_filter, adapt_mask, embedding_tables, path_names
from jaxrec.models.common import Head, MultiHotEmbed, spec_field, support_encoder
from jaxrec.models.gru import GRURecommender
from jaxrec.models.item_history import LWA, NLBA
from jaxrec.models.item_warmup import MWUF, MetaEmb
from jaxrec.models.linear import FactorizationMachine, LinearModel
from jaxrec.models.mamo import MAMO
from jaxrec.models.melu import MeLU
from jaxrec.models.mf import MatrixFactorization
from jaxrec.models.neumf import NeuMF
from jaxrec.models.registry import MODELS, create, default_loss, init_params, register
from jaxrec.models.tanp import TaNP, neural_process_loss
from jaxrec.models.two_tower import TwoTower

__all__ = [
    "MODELS",
    "FactorizationMachine",
    "GRURecommender",
    "Head",
    "LWA",
    "LinearModel",
    "MAMO",
    "MatrixFactorization",
    "MWUF",
    "MeLU",
    "MetaEmb",
    "MultiHotEmbed",
    "NLBA",
    "NeuMF",
    "TaNP",
    "TwoTower",
    "adapt_filter",
    "adapt_mask",
    "create",
    "default_loss",
    "embedding_tables",
    "init_params",
    "neural_process_loss",
    "path_names",
    "register",
    "spec_field",
    "support_encoder",
]
