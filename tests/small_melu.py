"""The small MeLU feature spec and model shared by the local-embedding and row-sparse update tests."""

import jaxrec
from jaxrec import models

SPEC = jaxrec.FeatureSpec(
    categorical={"user": 1, "item": 40, "user_gender": 2, "user_zip": 30, "item_year": 9},
    multi_hot={"item_genres": 5},
    target="rating",
    rating_range=(1.0, 5.0),
)
MODEL = models.MeLU(SPEC, embed=4, hidden=(6,), use_ids=("item",), interaction=None)
