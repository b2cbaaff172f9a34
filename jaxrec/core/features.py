"""Feature specification shared by the data pipeline and the models.

Rows of a task are a dict of arrays. Row keys follow one convention so that any model can read any dataset:

* ``"user"``, ``"item"``: int32 ids into a vocabulary whose slot 0 is out-of-vocabulary (a user or item never
  seen in meta-training maps there, so it still gets a valid row at adaptation time).
* ``"user_<field>"``, ``"item_<field>"``: int32 categorical side features (slot 0 = unknown / OOV), e.g.
  ``user_gender``, ``user_age``, ``user_occupation``, ``user_zip``, ``item_year``.
* multi-hot side features: float32 ``[rows, width]``, e.g. ``item_genres``.
* ``"rating"``: float32 explicit target; ``"label"``: float32 0/1 implicit target.
* ``"history_item"`` (int32 ``[rows, L]``, 0 = padding) and ``"history_rating"`` (float32 ``[rows, L]``): the
  user's previous items, for sequence models.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

__all__ = ["FeatureSpec"]


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """What a model needs to know about the rows it will see.

    Attributes:
      categorical: row key -> vocabulary size (slot 0 included). Always holds ``"user"`` and ``"item"``.
      multi_hot: row key -> width of the multi-hot vector.
      target: the row key of the training target (``"rating"`` or ``"label"``).
      rating_range: ``(min, max)`` of explicit ratings, for clipping predictions; ``None`` if implicit.
      history: length ``L`` of ``history_*`` sequences in the rows (0 when absent).
    """

    categorical: Mapping[str, int]
    multi_hot: Mapping[str, int] = dataclasses.field(default_factory=dict)
    target: str = "rating"
    rating_range: tuple[float, float] | None = None
    history: int = 0

    def fields(self, prefix: str) -> list[str]:
        """The categorical side-feature keys that start with ``prefix``.

        Args:
          prefix: ``"user_"`` or ``"item_"``.

        Returns:
          The keys, sorted.
        """
        return sorted(k for k in self.categorical if k.startswith(prefix))

    def multi_hot_fields(self, prefix: str) -> list[str]:
        """The multi-hot feature keys that start with ``prefix``.

        Args:
          prefix: ``"user_"`` or ``"item_"``.

        Returns:
          The keys, sorted.
        """
        return sorted(k for k in self.multi_hot if k.startswith(prefix))

    def to_dict(self) -> dict:
        """The spec as plain JSON-ready values (``rating_range`` as a list or None); :meth:`from_dict` inverts it.

        Returns:
          ``{"categorical", "multi_hot", "target", "rating_range", "history"}``.
        """
        return {
            "categorical": dict(self.categorical),
            "multi_hot": dict(self.multi_hot),
            "target": self.target,
            "rating_range": list(self.rating_range) if self.rating_range else None,
            "history": self.history,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> FeatureSpec:
        """The spec of a :meth:`to_dict` mapping.

        Args:
          d: a mapping with ``"categorical"`` and optionally ``"multi_hot"`` (default empty), ``"target"`` (default
            ``"rating"``), ``"rating_range"`` (default None) and ``"history"`` (default 0).

        Returns:
          The :class:`FeatureSpec`.
        """
        rr = d.get("rating_range")
        return cls(
            categorical=dict(d["categorical"]),
            multi_hot=dict(d.get("multi_hot", {})),
            target=d.get("target", "rating"),
            rating_range=tuple(rr) if rr else None,
            history=int(d.get("history", 0)),
        )
