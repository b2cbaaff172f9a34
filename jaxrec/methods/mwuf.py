"""MWUF as published: Zhu, Xie, Zhuang, Ge, Xiao, Xiong and Zhang, "Learning to Warm Up Cold Item Embeddings for
Cold-start Recommendation with Meta Scaling and Shifting Networks", SIGIR 2021.

Item cold start with each item as a task (``tasks_by="item"``). A base model is trained on the warm items
(stage one: ``pretrain=True``, the supervised model); then, with the base fixed (``frozen``), the meta scaling
network (from the item's features) and the meta shifting network (from the mean id embedding of the users who
rated it, its support set) learn to turn the cold id embedding into a warm one,
``phi_warm = tau_scale * phi_cold + tau_shift`` (:class:`jaxrec.models.MWUF`), trained on warm items treated as
cold and scored on the ``new_item`` scenario. The support set is encoded, not fine-tuned
(:class:`jaxrec.core.solvers.Amortized`): the step is exact in both orders.

Hyper-parameters: the authors train the meta networks by Adam at 1e-3 with mini-batches of items; the epochs (30)
and 32 items per step follow jaxrec's other recipes; widths in :mod:`jaxrec.models.mwuf`.
"""

from __future__ import annotations

from typing import Any

from jaxrec.models.mwuf import FROZEN_BASE

__all__ = ["mwuf"]


def mwuf() -> dict[str, Any]:
    """The config fields of MWUF.

    Returns:
      The config fields (item tasks, the supervised base model frozen, ``inner_solver="encode"``).
    """
    return {
        "model": "mwuf",
        "model_kwargs": {"width": 16, "hidden": [32, 32], "meta_hidden": 16},
        "tasks_by": "item",
        "algorithm": "maml",
        "order": "second",
        "adapt": "default",
        "inner_solver": "encode",
        "inner_steps": 1,
        "tune_inner_lr": False,
        "meta_lr": 1e-3,
        "batch_size": 32,
        "epochs": 30,
        "pretrain": True,
        "frozen": FROZEN_BASE,
        "item_dropout": 0.0,
    }
