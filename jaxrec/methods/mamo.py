"""MAMO as published: Dong, Yuan, Yao, Xu and Zhu, "MAMO: Memory-Augmented Meta-Optimization for Cold-start
Recommendation", KDD 2020 (:mod:`jaxrec.models.mamo` has the equations).

Each user starts adapting from an initialisation read from memories keyed by their profile (their side
features): the user network from ``theta_u - tau b_u``, the memory layer from the preference memory. The local
update is ``K_in`` gradient steps on the support set over the embedding and recommendation networks; the global
update is MAML's on the query set; after each meta-step the memories are written from the batch's adapted users.

Choices, from the authors' released configuration where the paper leaves them open: 3 memory slots, ``tau`` =
0.01, write rates ``alpha`` = 0.5, ``beta`` = 0.05, ``gamma`` = 0.1, embeddings of width 100, 3 local steps at
rate ``rho`` = 0.01 (not tuned: ``tune_inner_lr=False``). The released code adapts with Adam on mini-batches of the
support set and applies the query gradient at the adapted parameters to the global ones, i.e. first-order MAML;
the paper writes plain gradient steps, which we follow, and ``order="first"`` is the default for that reason
(``order="second"`` is the exact meta-gradient through the local update). The released global update is plain
SGD with rate 0.05 on a sum over 100 users per epoch (3 epochs), for which jaxrec's Adam has no equivalent: Adam at
1e-4 as for TaNP, 32 users per step and 30 epochs, jaxrec's budget where a released configuration does not carry
over.
"""

from __future__ import annotations

from typing import Any

__all__ = ["mamo"]


def mamo(order: str = "first") -> dict[str, Any]:
    """The config fields of MAMO.

    Args:
      order: ``"first"`` (the released code's meta-gradient) or ``"second"`` (exact through the local update).

    Returns:
      The config fields (the memories are frozen for the optimiser and written after each step: ``resolve``
      adds the model's pattern to ``frozen``).

    Raises:
      ValueError: if ``order`` is neither.
    """
    if order not in ("second", "first"):
        raise ValueError(f"order must be 'second' or 'first', got {order!r}")
    return {
        "model": "mamo",
        "model_kwargs": {
            "width": 100,
            "use_ids": [],
            "memories": 3,
            "tau": 0.01,
            "profile_rate": 0.5,
            "fast_rate": 0.05,
            "preference_rate": 0.1,
        },
        "algorithm": "maml",
        "order": order,
        "adapt": "default",
        "inner_solver": "sgd",
        "inner_steps": 3,
        "inner_lr": 0.01,
        "tune_inner_lr": False,
        "meta_lr": 1e-4,
        "batch_size": 32,
        "epochs": 30,
        "pretrain": False,
        "item_dropout": 0.0,
    }
