"""MeLU as published: Lee, Im, Jang, Cho and Chung, "MeLU: Meta-Learned User Preference Estimator for Cold-Start
Recommendation", KDD 2019.

The model (:class:`jaxrec.models.MeLU`) embeds the user's and the item's features (no ids), concatenates them and
scores ``y_hat = f_theta2(x)`` with an MLP of decision layers ``theta2``; the embeddings ``theta1`` are global.
For user ``u`` with support ``S_u`` the *local update* moves only the decision layers,

    theta2_u <- theta2 - alpha grad_theta2 L_{S_u}(theta1, theta2)        (``local_steps`` times),

with ``L`` the mean squared error of the ratings, and the *global update* is MAML's on the query ``Q_u``,

    (theta1, theta2) <- (theta1, theta2) - beta grad sum_u L_{Q_u}(theta1, theta2_u).

MeLU-1 and MeLU-5 are ``local_steps`` = 1 and 5. Choices where the paper leaves a detail open, taken from its
authors' released code and configuration: embeddings of width 32, a multi-valued field (genres) embedded as the
mean of its values' embeddings (``multi_hot="mean"``), decision layers of 64 and 64 units with ReLU, ``alpha`` =
5e-6, ``beta`` = 5e-5 (Adam), 32 users per global step, 20 epochs, a random start, no item-id dropout.

The global update above differentiates through the local update: ``order="second"`` (the default) is that exact
meta-gradient. The released code computes the local step with ``create_graph=True`` but then copies the adapted
weights into the model (``load_state_dict``), which cuts them from the graph, so its meta-gradient is the query
loss's gradient at the adapted weights: first order (FOMAML), which ``order="first"`` reproduces. The local rate is
the published one, not tuned (``tune_inner_lr=False``); with a rate that small the local update barely moves the
decision layers, which the comparison in ``docs/results.md`` measures against the model without it
(``no_adapt``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["melu"]


def melu(local_steps: int = 5, order: str = "second") -> dict[str, Any]:
    """The config fields of MeLU-``local_steps``.

    Args:
      local_steps: local (inner) updates per user: 1 (MeLU-1) or 5 (MeLU-5) in the paper; any count >= 1.
      order: ``"second"`` (the exact meta-gradient) or ``"first"`` (what the released code computes).

    Returns:
      The config fields.

    Raises:
      ValueError: if ``local_steps`` < 1 or ``order`` is neither.
    """
    if int(local_steps) < 1:
        raise ValueError(f"MeLU needs at least one local update, got local_steps={local_steps}")
    if order not in ("second", "first"):
        raise ValueError(f"order must be 'second' or 'first', got {order!r}")
    return {
        "model": "melu",
        "model_kwargs": {
            "embed": 32,
            "hidden": [64, 64],
            "use_ids": [],
            "interaction": None,
            "item_bias": False,
            "multi_hot": "mean",
        },
        "algorithm": "maml",
        "order": order,
        "adapt": "head",
        "inner_solver": "sgd",
        "inner_steps": int(local_steps),
        "inner_lr": 5e-6,
        "tune_inner_lr": False,
        "meta_lr": 5e-5,
        "batch_size": 32,
        "epochs": 20,
        "pretrain": False,
        "item_dropout": 0.0,
    }
