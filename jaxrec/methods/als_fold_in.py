"""jaxrec's top-N recipe for new users from implicit feedback: a two-tower model whose user vector is the exact
implicit-ALS fold-in of the support set, meta-trained through that fold-in (Finn et al., ICML 2017, with the
objective of Hu, Koren and Volinsky, ICDM 2008).

The model (:class:`jaxrec.models.TwoTower`, no hidden layer) scores ``s_i = <p, q_i> + b_i + mu``. A new user's
vector is one Newton step on the implicit-ALS objective over the whole catalogue, from the meta-learned prior ``p0``
(:func:`jaxrec.core.ranking.catalogue_als_loss`)::

    p = argmin_p  p~^T G p~ + sum_{i in S} [(1 + c w_i) (1 - s_i)^2 - s_i^2] + ||p - p0||^2 / (2 alpha)

(``G`` the Gram matrix of every catalogue item's vector, ``c`` the confidence of an interaction, ``w_i`` its
weight, ``alpha`` the inner rate): the objective is quadratic in ``p``, so the step is the exact fold-in, the
``mf`` baseline's solve when the item vectors are ALS's factors. The item vectors start at the factors of
implicit ALS fitted on the meta-train users at the fold-in's own strengths (ridge ``1 / (2 alpha)``, confidence
``c``), so that the untrained model is that ``mf`` fold-in, and meta-training differentiates the query's
implicit-ALS loss through the step into the item tower, its biases and the prior, exactly (second order).

A new user's support is their first interactions in time: the fold-in weighs them by their order, the newest most
(``support_recency``: the strength chosen on the validation users among 0 to 8, as every baseline's is; logs
without timestamps are not weighted).

Where it comes from: chosen on the validation users of ml-100k and ml-latest-small (docs/research-log.md, sessions
10 to 27: the exact catalogue term against sampled negatives, the ALS start, the meta-rate, the epochs, the
embedding width, ridge and confidence, the support's order). Test new users, Recall@20 over the whole catalogue,
three splits by three trainings, every baseline's fold-in weighted by its own chosen order too: 0.1932 on ml-100k
(confidence 1; EASE 0.1882) and 0.1583 on ml-latest-small (confidence 10; ALS 0.1489) (docs/results.md). The
confidence is the one strength the two sets chose apart: ``--als-confidence`` sets it, and it is worth choosing on a
log's own validation users: ``jaxrec choose --method twotower-als`` trains the points of :data:`GRID` and keeps the
best there.
"""

from __future__ import annotations

from typing import Any

__all__ = ["GRID", "twotower_als"]

#: the fold-in's two strengths, to choose on a log's own validation users (``jaxrec choose --method twotower-als``):
#: the confidence of an interaction (ml-100k chose 1, ml-latest-small 10) and the inner rate, whose ridge
#: ``1 / (2 alpha)`` is 10, 100 or 1000 (MovieLens chose 10; a 28,000-item click log of weak tastes chose 1000,
#: the fold-in near its meta-learned prior)
GRID: dict[str, list[float]] = {"als_confidence": [1.0, 10.0], "inner_lr": [0.05, 0.005, 0.0005]}


def twotower_als(confidence: float = 10.0) -> dict[str, Any]:
    """The config fields of the two-tower model meta-trained through the exact ALS fold-in.

    Args:
      confidence: ``c``, the extra confidence of an interaction (``als_confidence``, ``>= 0``, checked by the
        config as every field is).

    Returns:
      The config fields (feedback implicit; a rated log also needs ``positive_threshold`` or takes every rating).
    """
    return {
        "feedback": "implicit",
        "model": "twotower",
        "model_kwargs": {"embed": 64},
        "algorithm": "maml",
        "ranking_loss": "als_exact",
        "als_confidence": confidence,
        "item_start": "als",
        "pretrain": False,
        "inner_lr": 0.05,
        "meta_lr": 0.001,
        "supervised_lr": 0.001,
        "epochs": 20,
        "support_recency": [0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0],
    }
