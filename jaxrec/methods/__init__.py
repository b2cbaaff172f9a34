"""Meta-learned recommenders of the literature, as named recipes: ``jaxrec train --method NAME``.

A recipe is a function from its paper's choices to the experiment's config fields (a plain dict that
:meth:`jaxrec.experiment.ExperimentConfig.make` reads), so that a method runs on the same compiled, vectorised
path, split, baselines and evaluation as every other configuration, and a comparison differs only in what names
it. Fields given beside ``--method`` (flags, ``--config``) override the recipe's.

* :func:`melu`: MeLU (Lee et al., KDD 2019), ``"melu-1"`` and ``"melu-5"``.
* :func:`mamo`: MAMO (Dong et al., KDD 2020), ``"mamo"`` (first order, as released) and ``"mamo-2"`` (second).
* :func:`tanp`: TaNP (Lin et al., WWW 2021), ``"tanp"``.
* :func:`lwa`, :func:`nlba`: LWA and NLBA (Vartak et al., NeurIPS 2017), ``"lwa"`` and ``"nlba"``: item cold
  start, each item a task.
* :func:`mwuf`: MWUF (Zhu et al., SIGIR 2021), ``"mwuf"``: a cold item's id embedding warmed up by meta scaling
  and shifting networks, each item a task.
* :func:`metaemb`: Meta-Embedding (Pan et al., SIGIR 2019), ``"metaemb"``: a new item's id embedding generated
  from its features and warmed up by one gradient step, each item a task.
* :func:`twotower_als`: jaxrec's own top-N recipe, ``"twotower-als"``: a two-tower model meta-trained through the
  exact implicit-ALS fold-in of a new user's interactions (implicit feedback, the whole catalogue ranked).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jaxrec.methods.als_fold_in import GRID as _TWOTOWER_ALS_GRID
from jaxrec.methods.als_fold_in import twotower_als
from jaxrec.methods.item_history import lwa, nlba
from jaxrec.methods.item_warmup import metaemb, mwuf
from jaxrec.methods.mamo import mamo
from jaxrec.methods.melu import melu
from jaxrec.methods.tanp import tanp

__all__ = [
    "GRIDS",
    "METHODS",
    "grid",
    "lwa",
    "mamo",
    "melu",
    "metaemb",
    "mwuf",
    "nlba",
    "recipe",
    "tanp",
    "twotower_als",
]

#: method name -> the recipe's config fields
METHODS: dict[str, Callable[[], dict[str, Any]]] = {
    "melu-1": lambda: melu(local_steps=1),
    "melu-5": lambda: melu(local_steps=5),
    "mamo": mamo,
    "mamo-2": lambda: mamo(order="second"),
    "tanp": tanp,
    "lwa": lwa,
    "nlba": nlba,
    "mwuf": mwuf,
    "metaemb": metaemb,
    "twotower-als": twotower_als,
}

#: method name -> the grid of config fields ``jaxrec choose --method NAME`` trains without ``--grid``
GRIDS: dict[str, dict[str, list[Any]]] = {"twotower-als": _TWOTOWER_ALS_GRID}


def grid(name: str) -> dict[str, list[Any]] | None:
    """The default grid of a named method for :func:`jaxrec.experiment.choose.choose`, or None if it has none."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    found = GRIDS.get(name)
    return None if found is None else {field: list(values) for field, values in found.items()}


def recipe(name: str) -> dict[str, Any]:
    """The config fields of a named method.

    Args:
      name: one of :data:`METHODS`.

    Returns:
      A new dict of config fields.

    Raises:
      ValueError: for an unknown name (the message lists the known ones).
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]()
