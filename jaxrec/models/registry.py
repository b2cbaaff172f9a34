"""The model registry, initialisation and default losses."""

from __future__ import annotations

import flax.linen as nn
import jax

from jaxrec.core.features import FeatureSpec
from jaxrec.core.losses import LossFn, bce_loss, mse_loss
from jaxrec.models.gru import GRURecommender
from jaxrec.models.linear import FactorizationMachine, LinearModel
from jaxrec.models.melu import MeLU
from jaxrec.models.mf import MatrixFactorization
from jaxrec.models.neumf import NeuMF
from jaxrec.testing import synthetic_rows

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
