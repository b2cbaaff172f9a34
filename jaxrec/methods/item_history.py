"""LWA and NLBA as published: Vartak, Thiagarajan, Miranda, Bratman and Larochelle, "A Meta-Learning Perspective
on Cold-Start Recommendations for Items", NeurIPS 2017.

Item cold start with each item as a task (``tasks_by="item"``): a new item is described by the users who rated it,
split by rating into an engaged and a non-engaged class, each summarised by the mean embedding of its users (the
class representatives ``R_1``, ``R_0``); the item's predictor is meta-learned as a function of them, with no
gradient step (:class:`jaxrec.models.LWA`: a linear model of the user whose weights are ``W_0 R_0 + W_1 R_1``;
:class:`jaxrec.models.NLBA`: a network of the user whose biases are linear in ``R_0``, ``R_1``). Meta-training
minimises the query loss over batches of items by Adam; the encoding is the inner "loop"
(:class:`jaxrec.core.solvers.Amortized`, ``inner_solver="encode"``), so the split, batches, compiled step and
evaluation are the harness's, on the ``new_item`` scenario.

Hyper-parameters: the paper's are those of a production system and not published; these are RecBole-MetaRec's
(field embeddings 32, the user network 64-32, NLBA's hidden layer 36, Adam at 1e-4, 32 tasks per step, 50 epochs).
The user id is a field (the support and query users of a new item are existing users, whose ids the model
trained), beside the users' side features where the dataset has them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["lwa", "nlba"]


def _item_encoder(model: str, model_kwargs: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": model,
        "model_kwargs": {"width": 32, "use_ids": ["user"], "user_hidden": [64], "dim": 32, **model_kwargs},
        "tasks_by": "item",
        "algorithm": "maml",
        "order": "second",
        "adapt": "default",
        "inner_solver": "encode",
        "inner_steps": 1,
        "tune_inner_lr": False,
        "meta_lr": 1e-4,
        "batch_size": 32,
        "epochs": 50,
        "pretrain": False,
        "item_dropout": 0.0,
    }


def lwa() -> dict[str, Any]:
    """The config fields of LWA (linear weight adaptation).

    Returns:
      The config fields (item tasks, ``inner_solver="encode"``, the class representatives adapted).
    """
    return _item_encoder("lwa", {})


def nlba() -> dict[str, Any]:
    """The config fields of NLBA (non-linear bias adaptation).

    Returns:
      The config fields (item tasks, ``inner_solver="encode"``, the class representatives adapted).
    """
    return _item_encoder("nlba", {"hidden": [36]})
