"""MWUF and MetaEmb as published: two ways of warming up a new item's id embedding, each item a task
(``tasks_by="item"``), scored on the ``new_item`` scenario (:mod:`jaxrec.models.item_warmup` has the equations).

* MWUF: Zhu, Xie, Zhuang, Ge, Xiao, Xiong and Zhang, "Learning to Warm Up Cold Item Embeddings for Cold-start
  Recommendation with Meta Scaling and Shifting Networks", SIGIR 2021. A base model trained on the warm items
  (stage one: ``pretrain=True``, the supervised model) is fixed (``frozen``); the meta scaling network (from the
  item's features) and the meta shifting network (from the mean id embedding of the users who rated it, its
  support set) learn to turn the cold id embedding into a warm one, on warm items treated as cold. The support
  set is encoded (:class:`jaxrec.core.solvers.Amortized`). The authors train the meta networks by Adam at 1e-3.
* MetaEmb: Pan, Li, Ding, Zhou and He, "Warm Up Cold-start Advertisements: Improving CTR Predictions via
  Learning to Learn ID Embeddings", SIGIR 2019. The same fixed base; a generator maps the item's features to its
  id embedding, which one gradient step on the support set warms up; the generator is trained on the weighted
  cold-start and warm-up losses (``alpha`` = 0.1), every meta-train item's id hidden (``task_item_dropout=1``)
  so that each is cold while it learns. Second order differentiates through the warm-up step; ``order="first"``
  drops it. Adam at 1e-3 as in the paper; the warm-up rate 0.1 (the paper's ``a`` is a hyper-parameter).

Both: 32 items per step and 30 epochs, jaxrec's budget where a paper gives none.
"""

from __future__ import annotations

from typing import Any

from jaxrec.models.item_warmup import FROZEN_BASE

__all__ = ["metaemb", "mwuf"]


def _warm_up(model: str) -> dict[str, Any]:
    return {
        "model": model,
        "model_kwargs": {"width": 16, "hidden": [32, 32], "meta_hidden": 16},
        "tasks_by": "item",
        "algorithm": "maml",
        "order": "second",
        "adapt": "default",
        "inner_steps": 1,
        "tune_inner_lr": False,
        "meta_lr": 1e-3,
        "batch_size": 32,
        "epochs": 30,
        "pretrain": True,
        "frozen": FROZEN_BASE,
        "item_dropout": 0.0,
    }


def mwuf() -> dict[str, Any]:
    """The config fields of MWUF.

    Returns:
      The config fields (item tasks, the supervised base model frozen, ``inner_solver="encode"``).
    """
    return {**_warm_up("mwuf"), "inner_solver": "encode"}


def metaemb(order: str = "second") -> dict[str, Any]:
    """The config fields of MetaEmb.

    Args:
      order: ``"second"`` (the exact meta-gradient through the warm-up step) or ``"first"``.

    Returns:
      The config fields (item tasks with every meta-train id hidden, the supervised base model and the warm-up's
      start frozen, one gradient step on ``context_delta``).

    Raises:
      ValueError: if ``order`` is neither.
    """
    if order not in ("second", "first"):
        raise ValueError(f"order must be 'second' or 'first', got {order!r}")
    return {
        **_warm_up("metaemb"),
        "order": order,
        "inner_solver": "sgd",
        "inner_lr": 0.1,
        "frozen": FROZEN_BASE[:-1] + "|context_delta)",
        "task_item_dropout": 1.0,
    }
