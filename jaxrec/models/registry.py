"""The model registry, initialisation and default losses."""

from __future__ import annotations

import flax.linen as nn
import jax

from jaxrec.core.features import FeatureSpec
from jaxrec.core.losses import LossFn, bce_loss, mse_loss
from jaxrec.models.gru import GRURecommender
from jaxrec.models.item_history import LWA, NLBA
from jaxrec.models.item_warmup import MWUF, MetaEmb
from jaxrec.models.linear import FactorizationMachine, LinearModel
from jaxrec.models.mamo import MAMO
from jaxrec.models.melu import MeLU
from jaxrec.models.mf import MatrixFactorization
from jaxrec.models.neumf import NeuMF
from jaxrec.models.tanp import TaNP
from jaxrec.models.two_tower import TwoTower
from jaxrec.testing import synthetic_rows

MODELS: dict[str, type[nn.Module]] = {
    "mf": MatrixFactorization,
    "linear": LinearModel,
    "fm": FactorizationMachine,
    "melu": MeLU,
    "neumf": NeuMF,
    "gru": GRURecommender,
    "twotower": TwoTower,
    "tanp": TaNP,
    "lwa": LWA,
    "nlba": NLBA,
    "mwuf": MWUF,
    "metaemb": MetaEmb,
    "mamo": MAMO,
}


def create(name: str, spec: FeatureSpec, **kwargs) -> nn.Module:
    """Create a registered model.

    Args:
      name: the model's name, one of :data:`MODELS`.
      spec: the feature spec of its rows.
      **kwargs: further arguments of its constructor.

    Returns:
      The Flax module.

    Raises:
      ValueError: if ``name`` is not registered.
    """
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}") from None
    return cls(spec=spec, **kwargs)


def init_params(model: nn.Module, spec: FeatureSpec, key: jax.Array) -> dict:
    """Initialise a model's variables with ``model.init`` on two synthetic rows of ``spec``.

    Args:
      model: the Flax module.
      spec: the feature spec of its rows.
      key: the PRNG key (split into a data key and a parameter key).

    Returns:
      The variables ``{"params": ...}`` for ``model.apply``.
    """
    data_key, param_key = jax.random.split(key)
    return jax.jit(model.init)(param_key, synthetic_rows(spec, 2, data_key))


def default_loss(model: nn.Module) -> LossFn:
    """Choose the loss of a model from its spec.

    Args:
      model: a model with a ``spec``.

    Returns:
      MSE on ``spec.target`` for explicit specs (``rating_range`` set), BCE on logits otherwise.
    """
    spec = model.spec
    if spec.rating_range is not None and spec.target != "label":
        return mse_loss(model.apply, spec.target)
    return bce_loss(model.apply, spec.target)
