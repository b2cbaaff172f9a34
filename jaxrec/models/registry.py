"""The model registry, initialisation and default losses."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable

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


#: the models built into jaxrec (never replaced by :func:`register`)
BUILT_IN = frozenset(MODELS)
#: the loss builders of registered models that bring their own (:func:`register`'s ``loss``)
_LOSSES: dict[type, Callable[[nn.Module], LossFn]] = {}


def register(
    name: str, cls: type[nn.Module], *, loss: Callable[[nn.Module], LossFn] | None = None, replace: bool = False
) -> None:
    """Register a model of one's own, so that a config names it (``model="<name>"``) and every harness builds it:
    :class:`~jaxrec.Experiment`, :class:`~jaxrec.TopNExperiment`, ``jaxrec.experiment.TrainingRun`` and the
    baselines' comparisons, on the same splits, seeds and paired intervals as the built-in models.

    The protocol a model follows (checked here as far as it can be without data; the model's first rows check the
    rest):

    * a Flax ``nn.Module`` whose constructor takes the rows' :class:`~jaxrec.core.features.FeatureSpec` as
      ``spec``, declared ``spec: FeatureSpec = jaxrec.models.common.spec_field`` (unhashed: a spec holds dicts, and a
      module is a static, hashed argument of the compiled rankers); further fields come from ``model_kwargs``;
    * ``__call__(rows) -> scores [rows]``, one float per row (rows: :mod:`jaxrec.core.features`' keys);
    * a static ``default_adapt_filter(path, leaf) -> bool``: the parameters adapted per user by default
      (``adapt="auto"`` or ``"default"``); ``adapt="all"``, ``"head"`` or a path pattern choose others.

    What the library then does by itself: the Newton inner step of ``inner_solver="auto"`` applies where the model
    has an output layer ``head/output`` (else gradient steps at ``inner_lr``), ``pretrain="bias"`` where it has
    ``bias_embed_item``; a subclass of :class:`~jaxrec.models.TwoTower` is a two-tower model whose catalogue is
    scored as one matrix product (any other model scores every item row by row). Top-N runs train it with the
    ranking loss of the config (``ranking_loss``: BPR, BCE, sampled softmax); a rated run with ``loss(model)``.

    A run folder of a registered model is read back (``TrainedModel.load``, ``recommend``, ``serve``) by a process
    that registered it the same way: on the command line, ``--import MODULE`` imports a module that registers it
    (``jaxrec train --import my_models --model mine``, then ``jaxrec serve --import my_models --checkpoint ...``).

    Args:
      name: the name configs use.
      cls: the model class.
      loss: ``loss(model) -> loss_fn(params, rows, mask)`` for rated data (default: :func:`default_loss`, MSE on
        ratings, BCE on 0/1 labels).
      replace: replace a model registered under ``name`` before (never a built-in one).

    A class is registered under one name (its loss goes with it): register a subclass to use it under another.

    Raises:
      ValueError: the name is taken (a built-in model, or another registration without ``replace``) or empty, or
        the class is registered under another name.
      TypeError: ``cls`` breaks the protocol above, or ``loss`` is not callable; the message says which point.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a model's name must be a non-empty string, got {name!r}")
    if name in BUILT_IN:
        raise ValueError(f"{name!r} is a built-in model: register yours under another name")
    if name in MODELS and not replace:
        raise ValueError(f"a model {name!r} is registered already: pass replace=True to replace it")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"model {name!r} must be a flax.linen.Module class, got {cls!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if "spec" not in fields:
        raise TypeError(
            f"model {name!r} must take the rows' FeatureSpec as a field 'spec' "
            "(spec: FeatureSpec = jaxrec.models.common.spec_field)"
        )
    if fields["spec"].hash is not False:
        raise TypeError(
            f"model {name!r} declares 'spec' hashed: declare it as jaxrec.models.common.spec_field (a spec holds "
            "dicts, and a module is hashed as a static argument of the compiled rankers)"
        )
    if not isinstance(inspect.getattr_static(cls, "default_adapt_filter", None), staticmethod):
        raise TypeError(
            f"model {name!r} needs a @staticmethod default_adapt_filter(path, leaf) -> bool: the parameters adapted "
            "per user by default (jaxrec.models.path_names(path) gives a path's names)"
        )
    elsewhere = [other for other, known in MODELS.items() if known is cls and other != name]
    if elsewhere:
        raise ValueError(
            f"{cls.__name__} is registered as {elsewhere[0]!r} already: register a subclass of it under {name!r}"
        )
    if loss is not None and not callable(loss):
        raise TypeError(f"loss must be callable, loss(model) -> loss_fn, got {type(loss).__name__}")
    previous = MODELS.get(name)
    if previous is not None:
        _LOSSES.pop(previous, None)
    MODELS[name] = cls
    if loss is not None:
        _LOSSES[cls] = loss


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
      A registered model's own loss (:func:`register`), else MSE on ``spec.target`` for explicit specs
      (``rating_range`` set), BCE on logits otherwise.
    """
    if type(model) in _LOSSES:
        return _LOSSES[type(model)](model)
    spec = model.spec
    if spec.rating_range is not None and spec.target != "label":
        return mse_loss(model.apply, spec.target)
    return bce_loss(model.apply, spec.target)
