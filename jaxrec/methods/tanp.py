"""TaNP as published: Lin, Wu, Zhou, Pan, Cao and Wang, "Task-adaptive Neural Process for User Cold-Start
Recommendation", WWW 2021.

The model (:class:`jaxrec.models.TaNP`) adapts to a user without a gradient step: each support pair ``(x_i,
y_i)`` is encoded, the codes are pooled by a mean into ``r_C`` (the latent path, ``q(z | C)``) and ``t_C`` (the
task identity, read against meta-learned cluster centres), and the decoder scores a query row from ``[x, z]``
through layers modulated FiLM-style by the task code. Training maximises the neural-process bound on each
user's query (target) set ``T``,

    L_u = MSE_T(decoded with z ~ q(z | C u T)) + KL(q(z | C u T) || q(z | C)),

averaged over a batch of users and minimised by Adam; a new user is scored with ``z`` from ``q(z | C)`` alone. In
jaxrec the encoding is the inner "loop" (:class:`jaxrec.core.solvers.Amortized`, ``inner_solver="encode"``): the
same split, batches, compiled step and evaluation as every other method, and a meta-gradient that is exact in
both orders (no inner gradient to drop).

Hyper-parameters from the authors' released code and configuration: ``x`` formed per side (the user's features,
the item's features) by a layer of 32 and a layer of 16, both with ReLU, the two sides concatenated; the pair
encoder 32-16-32, ``z`` of 32 through a hidden layer of 32, the task encoder 32-32-16, 10 centres at temperature 1,
the decoder 32-32-16; Adam at 1e-4 with 32 users per step for 100 epochs, from a random start; no user or item id
as a field (features only, as MeLU). What jaxrec does differently (the mean of ``z`` decoded, the support and query
as context and target, no clustering regulariser) is listed in :mod:`jaxrec.models.tanp`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["tanp"]


def tanp() -> dict[str, Any]:
    """The config fields of TaNP.

    Returns:
      The config fields (``inner_solver="encode"``, one encoding, the model's context leaves adapted).
    """
    return {
        "model": "tanp",
        "model_kwargs": {
            "width": 32,
            "use_ids": [],
            "side_layers": [16],
            "encoder": [32, 16, 32],
            "latent_hidden": 32,
            "latent": 32,
            "task_encoder": [32, 32, 16],
            "clusters": 10,
            "temperature": 1.0,
            "decoder": [32, 32, 16],
        },
        "algorithm": "maml",
        "order": "second",
        "adapt": "default",
        "inner_solver": "encode",
        "inner_steps": 1,
        "tune_inner_lr": False,
        "meta_lr": 1e-4,
        "batch_size": 32,
        "epochs": 100,
        "pretrain": False,
        "item_dropout": 0.0,
    }
