"""Top-N (retrieval) baselines for implicit feedback: the ones a practitioner runs before anything meta-learned.

Each baseline is a pair of pure pieces:

* ``fit_<name>(X, **hyper) -> <Name>Model`` fits on the meta-train users' interaction matrix ``X`` (a
  ``scipy.sparse`` CSR ``[n_train_users, n_items]`` of non-negative interaction weights, 1.0 for a plain click;
  see :func:`interaction_matrix`), and returns a frozen dataclass of numpy arrays;
* ``model.scores(S) -> float32 [n_eval_users, n_items]`` scores the whole catalogue for NEW users from their
  fold-in matrix ``S`` (CSR ``[n_eval_users, n_items]``, each row the user's few support interactions). Higher is
  more recommended. The support items are NOT masked: the caller masks them and takes the top ``k``.

The baselines (:data:`RETRIEVAL_BASELINES`):

* ``popular``: item popularity, the same ranking for everyone.
* ``itemknn``: item-item cosine neighbourhoods (Sarwar et al., WWW 2001), ``scores = S @ C``.
* ``ease``: the shallow linear auto-encoder EASE (Steck, WWW 2019), ``scores = S @ B``.
* ``mf``: implicit-feedback matrix factorisation by weighted alternating least squares (Hu, Koren & Volinsky,
  ICDM 2008), new users folded in by one exact ALS step against the trained item factors.

and, outside the registry since it is fitted on the items' side features rather than ``X``:

* ``content``: :func:`fit_content`, the cosine between a user's summed support features and each item's: the
  baseline that can rank a new item (one without interactions).

Everything is numpy / scipy and vectorised; the dense work is done in row blocks of at most
``_BLOCK_ELEMENTS`` float64 numbers (128 MiB), so memory stays bounded for catalogues of 50k items (except EASE,
which inverts a dense item-item matrix and refuses more than :data:`EASE_MAX_ITEMS` items).

>>> X = interaction_matrix([0, 0, 1, 2], [0, 1, 1, 2], None, n_users=3, n_items=3)
>>> fit_popular(X).scores(X[:1]).tolist()
[[1.0, 2.0, 1.0]]
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import scipy.sparse.linalg
import threadpoolctl

__all__ = [
    "EASE_MAX_ITEMS",
    "EASE_SLOW_ITEMS",
    "ITEMKNN_WEIGHTINGS",
    "MF_ITERATIONS",
    "RETRIEVAL_BASELINES",
    "ContentModel",
    "EASEModel",
    "ItemKNNModel",
    "MFModel",
    "PopularModel",
    "als_objective",
    "fit_baseline",
    "fit_content",
    "ease_precision",
    "fit_ease",
    "fit_itemknn",
    "fit_mf",
    "fit_popular",
    "interaction_matrix",
    "missing_weights",
    "slow_to_fit",
    "support_matrix",
    "unfittable",
]

#: The largest dense item-item system :func:`fit_ease` accepts: ``30000**2`` float64 numbers are 7.2 GB (float32:
#: 3.6 GB), and the Cholesky factorisation and inverse take ``n**3`` flops (minutes on a workstation).
EASE_MAX_ITEMS = 30000

#: From this many items with training interactions on, :func:`slow_to_fit` tells a tuning loop EASE's cost before its
#: first fit: ``n**3`` flops on one core each (measured at 40-80 Gflop/s on the 2-core reference host, so about 17 s
#: a fit at 10,000 items and 5 minutes at 26,000).
EASE_SLOW_ITEMS = 10000

#: the ALS sweeps of :func:`fit_mf` (each solves every user's and every item's factors once)
MF_ITERATIONS = 15

#: ``fit_ease(dtype="auto")`` factorises in float32 while ``cond(G)`` is at most this: the inverse's relative error
#: is then at most about ``cond(G) * 6e-8``, 6e-4, far below the gaps between the scores that order a top-N list.
EASE_FLOAT32_MAX_CONDITION = 1e4

logger = logging.getLogger(__name__)

# Dense blocks (Gram rows, outer products, stacked normal equations) hold at most this many float64 numbers.
_BLOCK_ELEMENTS = 1 << 24


# ----------------------------------------------------------------------------------------------------------------
# input checks


def interaction_matrix(
    users: Any,
    items: Any,
    weights: Any,
    n_users: int,
    n_items: int,
) -> sp.csr_matrix:
    """Build the implicit-feedback matrix ``X[u, i] = sum of the weights of (u, i)`` from interaction triples.

    Args:
      users: int ``[n]``, the row (user index) of each interaction, in ``[0, n_users)``.
      items: int ``[n]``, the column (item index) of each interaction, in ``[0, n_items)``.
      weights: ``[n]`` interaction weights, a scalar, or None for 1.0 each (a plain click).
      n_users: the number of rows.
      n_items: the number of columns (the catalogue).

    Returns:
      float32 CSR ``[n_users, n_items]`` with duplicates summed and sorted indices; entries that sum to zero are
      dropped.

    Raises:
      ValueError: if the arrays are not 1-D of one length, an index is not an integer or is out of range, or a
        weight is not finite.
    """
    n_users, n_items = _count(n_users, "n_users"), _count(n_items, "n_items")
    users, items = np.asarray(users), np.asarray(items)
    if users.ndim != 1 or items.ndim != 1 or users.shape != items.shape:
        raise ValueError(f"users and items must be 1-D of one length, got shapes {users.shape} and {items.shape}")
    weights = np.ones(users.shape, np.float64) if weights is None else np.asarray(weights, np.float64)
    if weights.ndim == 0:
        weights = np.full(users.shape, float(weights))
    if weights.shape != users.shape:
        raise ValueError(f"weights must match users and items, got shape {weights.shape} for {users.shape[0]} pairs")
    if not np.all(np.isfinite(weights)):
        raise ValueError(f"weights must be finite; {int(np.sum(~np.isfinite(weights)))} are NaN or infinite")
    rows = _indices(users, n_users, "users", "n_users")
    cols = _indices(items, n_items, "items", "n_items")
    X = sp.csr_matrix((weights, (rows, cols)), shape=(n_users, n_items))  # sums duplicates
    X.eliminate_zeros()
    X.sort_indices()
    return X.astype(np.float32)


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return int(value)


def _indices(values: np.ndarray, size: int, name: str, size_name: str) -> np.ndarray:
    if values.size and not (np.issubdtype(values.dtype, np.integer) or np.all(np.mod(values, 1) == 0)):
        raise ValueError(f"{name} must be integer indices")
    values = values.astype(np.int64)
    bad = (values < 0) | (values >= size)
    if np.any(bad):
        raise ValueError(f"{name} must lie in [0, {size_name}={size}); got {values[bad][0]} ({int(bad.sum())} out)")
    return values


def _as_csr(M: Any, name: str, *, n_items: int | None = None, nonnegative: bool = False) -> sp.csr_matrix:
    """A float64 CSR copy of ``M`` (sparse or dense, 2-D), checked, explicit zeros dropped, indices sorted."""
    if sp.issparse(M):
        M = sp.csr_matrix(M, dtype=np.float64, copy=True)
    else:
        array = np.asarray(M)
        if array.ndim != 2:
            raise ValueError(f"{name} must be a 2-D matrix [users, items], got shape {array.shape}")
        M = sp.csr_matrix(array.astype(np.float64))
    if M.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix [users, items], got shape {M.shape}")
    if n_items is not None and M.shape[1] != n_items:
        raise ValueError(f"{name} has {M.shape[1]} items (columns) but the model was fitted on {n_items}")
    M.sum_duplicates()
    if not np.all(np.isfinite(M.data)):
        raise ValueError(f"{name} must hold finite weights; {int(np.sum(~np.isfinite(M.data)))} are NaN or infinite")
    if nonnegative and np.any(M.data < 0):
        raise ValueError(f"{name} must hold non-negative weights (the confidence 1 + alpha * x must be >= 1)")
    M.eliminate_zeros()
    M.sort_indices()
    return M


def _train_matrix(X: Any, *, nonnegative: bool = False) -> sp.csr_matrix:
    X = _as_csr(X, "X", nonnegative=nonnegative)
    if X.shape[0] == 0 or X.shape[1] == 0 or X.nnz == 0:
        raise ValueError(f"X is empty (shape {X.shape}, {X.nnz} interactions): there is nothing to fit on")
    return X


def _positive(value: Any, name: str, *, strict: bool = True) -> float:
    value = float(value)
    if not np.isfinite(value) or value < 0 or (strict and value == 0):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} 0, got {value}")
    return value


def _gram_blocks(X: sp.csr_matrix, *, dense: bool = True):
    """Yield ``(start, stop, (X^T X)[start:stop])`` as float64 row blocks of at most ``_BLOCK_ELEMENTS`` rows times
    columns: dense arrays, or CSR matrices with ``dense=False`` (the same bound, for a block that may be dense)."""
    Xt = X.T.tocsr()
    n = X.shape[1]
    rows = max(1, _BLOCK_ELEMENTS // max(n, 1))
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        block = Xt[start:stop] @ X
        yield start, stop, block.toarray() if dense else block.tocsr()


# ----------------------------------------------------------------------------------------------------------------
# popular


@dataclasses.dataclass(frozen=True)
class PopularModel:
    """Item popularity.

    Attributes:
      popularity: float32 ``[n_items]``, the score of each item.
    """

    popularity: np.ndarray

    @property
    def n_items(self) -> int:
        return int(self.popularity.shape[0])

    def scores(self, S: Any) -> np.ndarray:
        """Score the catalogue: the popularity row, the same for every user.

        Args:
          S: the fold-in matrix ``[n_eval_users, n_items]`` (only its shape is used).

        Returns:
          float32 ``[n_eval_users, n_items]``.

        Raises:
          ValueError: if ``S`` has another number of items or non-finite weights.
        """
        S = _as_csr(S, "S", n_items=self.n_items)
        return np.tile(self.popularity, (S.shape[0], 1))


def fit_popular(X: Any, *, weighted: bool = False) -> PopularModel:
    """Fit the most-popular ranking: ``score_i = |{u : x_ui > 0}|`` (or ``sum_u x_ui`` when ``weighted``).

    The non-personalised baseline of every top-N study (e.g. Cremonesi, Koren & Turrin, RecSys 2010): on
    MovieLens it is hard to beat by a wide margin.

    Args:
      X: the training interactions ``[n_train_users, n_items]``.
      weighted: score by summed weights instead of the number of users.

    Returns:
      The :class:`PopularModel`.

    Raises:
      ValueError: if ``X`` is empty or holds non-finite weights.
    """
    X = _train_matrix(X)
    popularity = np.asarray(X.sum(axis=0)).ravel() if weighted else np.diff(X.tocsc().indptr).astype(np.float64)
    return PopularModel(popularity=popularity.astype(np.float32))


# ----------------------------------------------------------------------------------------------------------------
# item kNN


@dataclasses.dataclass(frozen=True)
class ItemKNNModel:
    """Sparse item-item similarities.

    Attributes:
      similarity: float32 CSR ``[n_items, n_items]``, ``C[i, j]`` = weight of a support item ``i`` in the score of
        a target item ``j``; column ``j`` holds ``j``'s ``neighbours`` most similar items, the diagonal is zero.
    """

    similarity: sp.csr_matrix

    @property
    def n_items(self) -> int:
        return int(self.similarity.shape[0])

    def scores(self, S: Any) -> np.ndarray:
        """Score the catalogue: ``S @ C``, the summed similarity of each item to the user's support items.

        Args:
          S: the fold-in matrix ``[n_eval_users, n_items]``.

        Returns:
          float32 ``[n_eval_users, n_items]``.

        Raises:
          ValueError: if ``S`` has another number of items or non-finite weights.
        """
        S = _as_csr(S, "S", n_items=self.n_items)
        return np.asarray((S @ self.similarity).toarray(), np.float32)


def fit_itemknn(X: Any, *, neighbours: int = 100, shrink: float = 0.0, weighting: str = "none") -> ItemKNNModel:
    """Fit item-based kNN with (shrunk) cosine similarity (Sarwar, Karypis, Konstan & Riedl, WWW 2001).

    With ``weighting="tfidf"`` the users' rows are first weighted as documents' terms are in TF-IDF, as the
    ``implicit`` library's ``TFIDFRecommender`` weighs them: ``X_ui <- sqrt(X_ui) idf_u`` with ``idf_u = log(n) -
    log(1 + n_u)``, ``n`` the number of items seen in ``X`` and ``n_u`` the user's number of items (items nobody
    interacted with, such as items added after training, change nothing). A user who interacted with
    much of the catalogue then says little about which two items go together (a pair's co-occurrence counts
    ``idf_u^2`` for each user it shares), and the cosine below is taken of the weighted columns. On MovieLens this
    ranks a new user's next items better than the plain cosine (research log, session 48). ``"none"``: ``X`` as
    given.

    With ``G = X^T X`` and ``D = diag(G)`` (the squared column norms),

        C_ij = G_ij / (sqrt(D_ii D_jj) + shrink),    i != j,    C_ii = 0,

    i.e. ``C = D^-1/2 G D^-1/2`` for ``shrink = 0`` (Aiolli's asymmetric cosine, RecSys 2013, at its symmetric
    point ``alpha = 1/2``); a positive ``shrink`` damps similarities between rarely seen items (the shrunk cosine of
    the kNN baselines of Ferrari Dacrema, Cremonesi & Jannach, RecSys 2019). Each target item ``j`` keeps only its
    ``neighbours`` largest similarities (column ``j`` of ``C``; among equal values at the cut the item with more
    users, then the lower item index; exact zeros are dropped), as in Sarwar et al.'s model size ``k``. Ties at the
    cut are common on binary logs (pairs seen together once). Where the computed values are exactly equal between
    items of unequal counts (binary cosines tie when ``c_i^2 / n_i = c_k^2 / n_k``, ``c`` the co-occurrences with
    the target and ``n`` the counts), the more popular is kept whatever the log's item codes; most ties are between
    items of equal counts, and those fall to the lower index. (With ``"tfidf"``, an item's users are those of
    nonzero weight: an item seen only by users of every item but one has no similarity.)
    The Gram matrix of the items seen in training (the others have no similarity) is formed in sparse row blocks of
    bounded size and each block's pairs sorted, so time is ``O(nnz log nnz)`` in the co-occurring pairs (not in
    ``n_items^2``) and memory ``O(n_items * neighbours)`` plus one block.

    Args:
      X: the training interactions ``[n_train_users, n_items]``.
      neighbours: the number of neighbours kept per item (>= 1); ``>= n_items - 1`` keeps every similarity.
      shrink: the shrinkage term (>= 0).
      weighting: ``"none"`` or ``"tfidf"``, the weighting of the users' rows before the cosine.

    Returns:
      The :class:`ItemKNNModel`.

    Raises:
      ValueError: if ``X`` is empty or holds non-finite weights (or negative ones, with ``"tfidf"``), or a
        hyper-parameter is out of range.
    """
    X = _train_matrix(X)
    if isinstance(neighbours, bool) or not isinstance(neighbours, int | np.integer) or neighbours < 1:
        raise ValueError(f"neighbours must be an int >= 1, got {neighbours!r}")
    shrink = _positive(shrink, "shrink", strict=False)
    if weighting not in ITEMKNN_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {', '.join(map(repr, ITEMKNN_WEIGHTINGS))}, got {weighting!r}")
    if weighting == "tfidf":
        X = _tfidf_rows(X)
    n = X.shape[1]
    users_per_item = np.diff(X.tocsc().indptr)
    items = np.flatnonzero(users_per_item)
    # the items in order of popularity (most users first, then catalogue index): the order in which equal
    # similarities at the cut are kept, so that a tie between items of unequal counts ignores the item codes
    items = items[np.argsort(-users_per_item[items], kind="stable")]
    X = X[:, items]
    m = items.size
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=0)).ravel())  # > 0: every column has a nonzero
    keep = min(int(neighbours), m)
    targets, sources, values = [], [], []
    for start, stop, gram in _gram_blocks(X, dense=False):
        rows = stop - start
        if gram.nnz > rows * m // _DENSE_FRACTION:  # co-occurrence dense (MovieLens): selected in place
            target, source, value = _top_of_dense_rows(gram, start, norms, shrink, keep)
        else:  # sparse (large catalogues): only the co-occurring pairs are sorted
            target, source, value = _top_of_sparse_rows(gram, start, norms, shrink, keep, m)
        targets.append(start + target)
        sources.append(source)
        values.append(value)
    similarity = sp.csr_matrix(
        (np.concatenate(values).astype(np.float32), (items[np.concatenate(sources)], items[np.concatenate(targets)])),
        shape=(n, n),
    )
    similarity.sort_indices()
    return ItemKNNModel(similarity=similarity)


#: the weightings of the users' rows :func:`fit_itemknn` takes
ITEMKNN_WEIGHTINGS = ("none", "tfidf")


def _tfidf_rows(X: sp.csr_matrix) -> sp.csr_matrix:
    """``sqrt(X_ui) idf_u / s``, ``idf_u = log(n) - log(1 + n_u)`` over the ``n`` items seen: :func:`fit_itemknn`'s
    ``"tfidf"``.

    ``s``, the root mean square of ``idf_u`` over the interactions, leaves the cosine as it is and keeps ``shrink``
    in the units of co-occurrence counts, so that on a binary log one shrink grid serves both weightings (on a
    weighted log a pair's plain term is ``x_ui x_uj``, its TF-IDF one ``sqrt(x_ui x_uj)`` times the idfs). A user
    of every seen item but one has ``idf_u = 0`` and drops out; a negative ``idf_u`` (a user of every item) enters
    squared, as every weight does in the Gram matrix."""
    if np.any(X.data < 0):
        raise ValueError(f"X must hold non-negative weights for weighting='tfidf' ({int(np.sum(X.data < 0))} < 0)")
    per_user = np.diff(X.indptr)
    idf = np.repeat(np.log(_seen_items(X)) - np.log1p(per_user), per_user)
    weighted = X.copy()
    weighted.data = np.sqrt(weighted.data) * idf
    weighted.eliminate_zeros()
    if weighted.nnz == 0:
        raise ValueError("weighting='tfidf' leaves no weight: every user interacted with all but one of the items seen")
    weighted.data /= np.sqrt(np.mean(idf**2))
    return weighted


#: a Gram block holding more than 1 / _DENSE_FRACTION of its entries is pruned densely, a sparser one by sorting
_DENSE_FRACTION = 8


def _similarities(gram: sp.csr_matrix, start: int, norms: np.ndarray, shrink: float):
    """The block's stored pairs ``(row, column, C)``, the diagonal and exact zeros left out."""
    row = np.repeat(np.arange(gram.shape[0]), np.diff(gram.indptr))
    column = gram.indices
    value = gram.data / (norms[start + row] * norms[column] + shrink)
    stored = (column != start + row) & (value != 0)
    return row[stored], column[stored], value[stored]


def _top_of_sparse_rows(gram: sp.csr_matrix, start: int, norms: np.ndarray, shrink: float, keep: int, m: int):
    """Each row's first ``keep`` similarities in the order of a stable sort of its dense row, largest first (the
    lower column first among equal values: the more popular item, then the lower index, in :func:`fit_itemknn`'s
    order; the implicit zeros, pairs never seen together and the diagonal, between the positive and the negative
    values and dropped): ``(row, column, value)`` of the kept pairs."""
    rows = gram.shape[0]
    row, column, value = _similarities(gram, start, norms, shrink)
    order = np.lexsort((column, -value, row))
    row, column, value = row[order], column[order], value[order]
    rank = np.arange(row.size) - np.searchsorted(row, np.arange(rows))[row]
    positives = np.bincount(row[value > 0], minlength=rows)
    room = np.maximum(keep - positives - (m - np.bincount(row, minlength=rows)), 0)  # left after the zeros
    taken = np.where(value > 0, rank < keep, rank - positives[row] < room[row])
    return row[taken], column[taken], value[taken]


def _top_of_dense_rows(gram: sp.csr_matrix, start: int, norms: np.ndarray, shrink: float, keep: int):
    """:func:`_top_of_sparse_rows`' choice, from the block made dense: every value above each row's ``keep``-th
    largest, then its equals in order of index until ``keep`` are taken."""
    block = np.zeros(gram.shape)
    row, column, value = _similarities(gram, start, norms, shrink)
    block[row, column] = value
    cut = -np.partition(-block, keep - 1, axis=1)[:, keep - 1 : keep]
    above = block > cut
    at_cut = block == cut
    taken = above | (at_cut & (np.cumsum(at_cut, axis=1) <= keep - above.sum(axis=1, keepdims=True)))
    taken &= block != 0
    row, column = np.nonzero(taken)
    return row, column, block[row, column]


# ----------------------------------------------------------------------------------------------------------------
# EASE


@dataclasses.dataclass(frozen=True)
class EASEModel:
    """EASE item-item weights, restricted to the items seen in training (the others have all-zero weights).

    Attributes:
      items: int64 ``[n_active]``, the catalogue indices of the items with at least one training interaction.
      weights: float32 ``[n_active, n_active]``, ``B`` on those items (zero diagonal).
      n_items: the size of the catalogue.
    """

    items: np.ndarray
    weights: np.ndarray
    n_items: int

    def dense_weights(self) -> np.ndarray:
        """``B`` on the whole catalogue: float32 ``[n_items, n_items]`` (zero rows and columns for unseen items)."""
        B = np.zeros((self.n_items, self.n_items), np.float32)
        B[np.ix_(self.items, self.items)] = self.weights
        return B

    def scores(self, S: Any) -> np.ndarray:
        """Score the catalogue: ``S @ B``.

        Args:
          S: the fold-in matrix ``[n_eval_users, n_items]``.

        Returns:
          float32 ``[n_eval_users, n_items]`` (zero for items never seen in training).

        Raises:
          ValueError: if ``S`` has another number of items or non-finite weights.
        """
        S = _as_csr(S, "S", n_items=self.n_items)
        out = np.zeros((S.shape[0], self.n_items), np.float32)
        out[:, self.items] = S[:, self.items].astype(np.float32) @ self.weights
        return out


def _ease_cost(n: int, width: int) -> str:
    """What EASE's dense ``n x n`` system of ``width``-byte numbers takes, in words."""
    return (
        f"EASE inverts a dense item-item matrix: {n} items with training interactions need "
        f"{width * n * n / 1e9:.1f} GB and ~{n**3 / 1e12:.0f} Tflop"
    )


def _ease_too_large(n: int, width: int, max_items: int) -> str | None:
    """Why EASE refuses ``n`` items (its dense ``n x n`` system of ``width``-byte numbers), or None."""
    if n <= max_items:
        return None
    return (
        f"{_ease_cost(n, width)}, over the limit of {max_items} items (prune the catalogue to the most popular "
        "items, or use itemknn or mf)"
    )


def unfittable(name: str, X: Any) -> str | None:
    """Why the baseline ``name`` cannot be fitted on ``X`` at any of its hyper-parameters (EASE on a catalogue over
    :data:`EASE_MAX_ITEMS` seen items), or None: a tuning loop asks once, before its grid.

    Args:
      name: a baseline's name.
      X: the training interactions ``[n_train_users, n_items]``.
    """
    if name != "ease":
        return None
    return _ease_too_large(_seen_items(X), 4, EASE_MAX_ITEMS)  # "auto" factorises in float32 at the least


def slow_to_fit(name: str, X: Any) -> str | None:
    """What one fit of the baseline ``name`` on ``X`` costs where it takes minutes (EASE on :data:`EASE_SLOW_ITEMS`
    or more seen items), or None: a tuning loop, which fits it at every point of its grid, says so before the first.

    Args:
      name: a baseline's name.
      X: the training interactions ``[n_train_users, n_items]``.
    """
    if name != "ease":
        return None
    n = _seen_items(X)
    if n < EASE_SLOW_ITEMS:
        return None
    seconds = n**3 / 60e9
    took = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
    return f"{_ease_cost(n, 4)} a fit (about {took} on one core at 60 Gflop/s)"


def _seen_items(X: Any) -> int:
    """How many items have at least one training interaction in ``X``."""
    return int(np.count_nonzero(np.diff(_train_matrix(X).tocsc().indptr)))


def fit_ease(X: Any, *, l2: float = 500.0, dtype: Any = "auto", max_items: int = EASE_MAX_ITEMS) -> EASEModel:
    """Fit EASE, the embarrassingly shallow auto-encoder (Steck, WWW 2019).

    EASE solves ``min_B ||X - X B||_F^2 + l2 ||B||_F^2`` subject to ``diag(B) = 0``. With ``G = X^T X + l2 I`` and
    ``P = G^-1`` the closed form (the KKT conditions with one Lagrange multiplier per diagonal entry) is

        B = I - P diag(1 / diag(P)),    i.e.  B_ij = -P_ij / P_jj  (i != j),  B_jj = 0,

    which satisfies ``G B = G - diag(1 / diag(P))``. ``G`` is symmetric positive definite, so ``P`` comes from its
    Cholesky factor (LAPACK ``potrf``, on one BLAS thread, + ``potri``), in place in one dense ``n x n`` array of
    ``dtype``. float32 halves the memory and time, and is accurate while ``cond(G) = 1 + ||X||_2^2 / l2`` stays far
    below ``1e7`` (its relative error is about ``cond(G) * 6e-8``); ``"auto"`` takes it up to
    :data:`EASE_FLOAT32_MAX_CONDITION` (``||X||_2`` from a sparse SVD), float64 beyond. Items without any training
    interaction form a diagonal block ``l2 I`` of ``G`` and get exactly zero weights, so the dense system is
    restricted to the items seen in training.

    Args:
      X: the training interactions ``[n_train_users, n_items]``.
      l2: the ridge strength ``lambda`` (> 0); Steck uses a few hundred on MovieLens-20M.
      dtype: the precision of the factorisation, ``"auto"``, ``np.float64`` or ``np.float32``.
      max_items: the largest dense system accepted.

    Returns:
      The :class:`EASEModel`.

    Raises:
      ValueError: if ``X`` is empty or holds non-finite weights, ``l2 <= 0``, ``dtype`` is not ``"auto"``,
        float32 or float64, or more than ``max_items`` items have training interactions (``P`` is a dense ``n x n``
        inverse: ``8 n^2`` bytes in float64 and ``n^3`` flops).
    """
    X = _train_matrix(X)
    l2 = _positive(l2, "l2")
    if not (isinstance(dtype, str) and dtype == "auto") and np.dtype(dtype) not in (np.float32, np.float64):
        raise ValueError(f"dtype must be 'auto', float64 or float32, got {dtype}")
    items = np.flatnonzero(np.diff(X.tocsc().indptr))
    n = items.size
    too_large = _ease_too_large(n, 4 if isinstance(dtype, str) else np.dtype(dtype).itemsize, max_items)
    if too_large:
        raise ValueError(too_large)
    Xa = X[:, items]
    dtype = ease_precision(Xa, l2) if isinstance(dtype, str) else np.dtype(dtype)
    G = np.empty((n, n), dtype)
    for start, stop, block in _gram_blocks(Xa):
        G[start:stop] = block
    G[np.diag_indices(n)] += l2
    # G is symmetric, so G.T is the same matrix in Fortran order: LAPACK then works in place, without a copy.
    # OpenBLAS's threaded potrf crashes the process on large systems (a segfault from n = 16,000 with two threads,
    # OpenBLAS 0.3.31; its threaded path has failed so before, OpenMathLib/OpenBLAS#2821): it runs on one thread.
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        factor, lower = scipy.linalg.cho_factor(G.T, lower=False, overwrite_a=True, check_finite=False)
    (potri,) = scipy.linalg.get_lapack_funcs(("potri",), (factor,))
    P, info = potri(factor, lower=lower, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"LAPACK potri failed with info={info}")
    _symmetrise_from_upper(P)
    diagonal = np.diag(P).copy()
    P /= -diagonal[None, :]
    P[np.diag_indices(n)] = 0.0
    return EASEModel(items=items.astype(np.int64), weights=P.astype(np.float32, copy=False), n_items=int(X.shape[1]))


def ease_precision(X: sp.csr_matrix, l2: float) -> np.dtype:
    """The precision ``fit_ease(dtype="auto")`` factorises ``G = X^T X + l2 I`` in: float32 while ``cond(G) = 1 +
    ||X||_2^2 / l2 <= EASE_FLOAT32_MAX_CONDITION``, else float64 (``||X||_2``, the largest singular value, from
    ARPACK started at the ones vector: the same answer on every run)."""
    if min(X.shape) < 2:
        top = float(np.linalg.norm(X.toarray(), 2))
    else:
        v0 = np.ones(min(X.shape))
        try:
            top = float(scipy.sparse.linalg.svds(X.astype(np.float64), k=1, v0=v0, return_singular_vectors=False)[0])
        except scipy.sparse.linalg.ArpackError as unknown:  # no bound: the safe precision
            logger.info("EASE at l2 %g: ||X||_2 not found (%s); factorised in float64", l2, unknown)
            return np.dtype(np.float64)
    condition = 1.0 + top * top / l2
    chosen = np.dtype(np.float32 if condition <= EASE_FLOAT32_MAX_CONDITION else np.float64)
    logger.debug("EASE at l2 %g: cond(G) = %.3g, factorised in %s", l2, condition, chosen)
    return chosen


def _symmetrise_from_upper(P: np.ndarray) -> None:
    """Copy the upper triangle of ``P`` onto its lower one, in place, block by block."""
    n = P.shape[0]
    rows = max(1, _BLOCK_ELEMENTS // max(n, 1))
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        P[start:stop, :start] = P[:start, start:stop].T
        diagonal = P[start:stop, start:stop]
        P[start:stop, start:stop] = np.triu(diagonal) + np.triu(diagonal, 1).T


# ----------------------------------------------------------------------------------------------------------------
# implicit ALS


@dataclasses.dataclass(frozen=True)
class MFModel:
    """Implicit-feedback matrix factorisation.

    Attributes:
      item_factors: float64 ``[n_items, factors]``, ``Y``.
      user_factors: float64 ``[n_train_users, factors]``, the training users' factors ``U`` (kept for diagnostics).
      l2: the ridge strength ``lambda`` used in training and in the fold-in.
      alpha: the confidence slope ``alpha`` (``c = m_i + alpha * x``).
      history: float64 ``[iterations]``, the objective (:func:`als_objective`) after each ALS sweep;
        non-increasing.
      missing_weights: float64 ``[n_items]``, ``m_i``, the confidence of item ``i`` as a missing (zero) pair; None
        for 1 everywhere (:func:`missing_weights`).
    """

    item_factors: np.ndarray
    user_factors: np.ndarray
    l2: float
    alpha: float
    history: np.ndarray
    missing_weights: np.ndarray | None = None

    @property
    def n_items(self) -> int:
        return int(self.item_factors.shape[0])

    def fold_in(self, S: Any) -> np.ndarray:
        """Fold new users in: the exact ALS user step against the trained item factors.

        For each row ``s`` of ``S``, ``u = (Y^T C Y + l2 I)^-1 Y^T C p`` with ``C = diag(m + alpha * s)`` and
        ``p = [s > 0]`` (see :func:`fit_mf`). A user without support gets ``u = 0``.

        Args:
          S: the fold-in matrix ``[n_eval_users, n_items]`` of non-negative weights.

        Returns:
          float64 ``[n_eval_users, factors]``.

        Raises:
          ValueError: if ``S`` has another number of items, or non-finite or negative weights.
        """
        S = _as_csr(S, "S", n_items=self.n_items, nonnegative=True)
        return _als_step(S, self.item_factors, self.l2, self.alpha, column_weights=self.missing_weights)

    def scores(self, S: Any) -> np.ndarray:
        """Score the catalogue: ``U_new Y^T`` with ``U_new`` from :meth:`fold_in`.

        Args:
          S: the fold-in matrix ``[n_eval_users, n_items]`` of non-negative weights.

        Returns:
          float32 ``[n_eval_users, n_items]``.

        Raises:
          ValueError: if ``S`` has another number of items, or non-finite or negative weights.
        """
        return np.asarray(self.fold_in(S) @ self.item_factors.T, np.float32)


def _als_step(
    R: sp.csr_matrix,
    F: np.ndarray,
    l2: float,
    alpha: float,
    *,
    row_weights: np.ndarray | None = None,
    column_weights: np.ndarray | None = None,
) -> np.ndarray:
    """Solve every row's factors against the fixed factors ``F`` (``[m, f]``) at once.

    For row ``r`` of ``R`` (``[n, m]``, non-negative) with nonzeros ``N(r)``, and ``W`` the confidence of a missing
    pair (1 by default; the item's ``m_i``: ``column_weights`` in the user step, ``row_weights`` in the item
    step), the normal equations are

        (F^T W_r F + l2 I + sum_{j in N(r)} alpha R_rj F_j F_j^T) u_r = sum_{j in N(r)} (W_rj + alpha R_rj) F_j,

    the ``F^T C_r F = F^T W_r F + F^T (C_r - W_r) F`` trick of Hu et al. (rows without nonzeros get ``u_r = 0``);
    ``F^T W_r F`` is one matrix for every row (``F^T diag(m) F`` in the user step, ``m_r F^T F`` in the item
    step). The
    sum of outer products is the Gram matrix ``Z_r^T Z_r`` of the row's nonzeros ``Z_r = sqrt(alpha R_rj) F_j``:
    rows are grouped by their number of nonzeros rounded up to a power of two, padded with zero rows to that
    length and multiplied as one stacked ``[rows, f, L] @ [rows, L, f]`` product (BLAS; at most twice the
    ``nnz f^2`` flops), in chunks of bounded memory; the stacked ``[rows, f, f]`` systems are solved by
    ``np.linalg.solve``.
    """
    n = R.shape[0]
    f = F.shape[1]
    out = np.zeros((n, f), np.float64)
    active = np.flatnonzero(np.diff(R.indptr))
    if active.size == 0:
        return out
    R = R[active]
    gram = F.T @ F if column_weights is None else F.T @ (column_weights[:, None] * F)
    scale = None if row_weights is None else np.asarray(row_weights, np.float64)[active]
    confidence = R.copy()
    if column_weights is not None:
        missing = column_weights[R.indices]
    elif scale is not None:
        missing = np.repeat(scale, np.diff(R.indptr))
    else:
        missing = 1.0
    confidence.data = missing + alpha * R.data
    rhs = np.asarray(confidence @ F)  # Y^T C_u p_u: p = 1 on the nonzeros, 0 elsewhere
    lengths = np.diff(R.indptr)
    padded = np.left_shift(1, np.ceil(np.log2(lengths)).astype(np.int64))  # lengths >= 1
    bounds = np.concatenate([[0], np.cumsum(padded)])
    max_rows = max(1, _BLOCK_ELEMENTS // (f * f))
    start = 0
    while start < R.shape[0]:
        # rows [start, stop): at most max_rows systems and _BLOCK_ELEMENTS padded factor numbers (>= one row)
        stop = int(np.searchsorted(bounds, bounds[start] + max(1, _BLOCK_ELEMENTS // f), side="right")) - 1
        stop = min(max(stop, start + 1), start + max_rows, R.shape[0])
        if scale is None:
            A = np.broadcast_to(gram + l2 * np.eye(f), (stop - start, f, f)).copy()
        else:
            A = scale[start:stop, None, None] * gram + l2 * np.eye(f)
        lo, hi = R.indptr[start], R.indptr[stop]
        Z = np.zeros((hi - lo + 1, f))  # the last row is the zero padding
        Z[:-1] = np.sqrt(alpha * R.data[lo:hi])[:, None] * F[R.indices[lo:hi]]
        chunk_padded = padded[start:stop]
        for length in np.unique(chunk_padded):
            rows = np.flatnonzero(chunk_padded == length)
            offsets = np.arange(length)
            positions = R.indptr[start + rows, None] - lo + offsets
            positions = np.where(offsets < lengths[start + rows, None], positions, hi - lo)
            Zp = Z[positions]  # [rows, L, f]
            A[rows] += np.matmul(Zp.transpose(0, 2, 1), Zp)
        out[active[start:stop]] = np.linalg.solve(A, rhs[start:stop, :, None])[..., 0]
        start = stop
    return out


def als_objective(
    X: Any,
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    *,
    l2: float,
    alpha: float,
    missing_weights: np.ndarray | None = None,
) -> float:
    """The weighted implicit-feedback objective of Hu, Koren & Volinsky (ICDM 2008, eq. 3).

        L(U, Y) = sum_{u, i} c_ui (p_ui - u_u^T y_i)^2 + l2 (||U||_F^2 + ||Y||_F^2),
        p_ui = [x_ui > 0],  c_ui = m_i + alpha x_ui,

    over ALL user-item pairs (``m_i = 1`` in the paper; item-dependent with ``missing_weights``), computed in
    ``O(nnz f + (n_users + n_items) f^2)`` as ``tr(U^T U Y^T M Y) + sum_{x_ui > 0} [c_ui (1 - s_ui)^2 - m_i
    s_ui^2]`` (``s = U Y^T``, ``M = diag(m)``) plus the ridge term.

    Args:
      X: the interactions ``[n_users, n_items]`` (non-negative).
      user_factors: ``[n_users, f]``.
      item_factors: ``[n_items, f]``.
      l2: the ridge strength.
      alpha: the confidence slope.
      missing_weights: ``m``, ``[n_items]``; None for 1 everywhere.

    Returns:
      The objective, a float.

    Raises:
      ValueError: if ``X`` holds non-finite or negative weights or the shapes disagree.
    """
    X = _as_csr(X, "X", n_items=np.shape(item_factors)[0], nonnegative=True)
    U = np.asarray(user_factors, np.float64)
    Y = np.asarray(item_factors, np.float64)
    if U.shape[0] != X.shape[0] or U.shape[1:] != Y.shape[1:]:
        raise ValueError(f"factor shapes {U.shape} and {Y.shape} do not fit X of shape {X.shape}")
    rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
    s = np.einsum("nf,nf->n", U[rows], Y[X.indices])
    m = np.ones(Y.shape[0]) if missing_weights is None else np.asarray(missing_weights, np.float64)
    c = m[X.indices] + alpha * X.data
    data_term = np.sum((U.T @ U) * (Y.T @ (m[:, None] * Y))) + np.sum(c * (1.0 - s) ** 2 - m[X.indices] * s**2)
    return float(data_term + l2 * (np.sum(U * U) + np.sum(Y * Y)))


def fit_mf(
    X: Any,
    *,
    factors: int = 64,
    iterations: int = MF_ITERATIONS,
    l2: float = 0.1,
    alpha: float = 1.0,
    missing_exponent: float = 0.0,
    seed: int = 0,
    on_sweep: Callable[[], Any] | None = None,
) -> MFModel:
    """Fit implicit-feedback matrix factorisation by weighted ALS (Hu, Koren & Volinsky, ICDM 2008).

    Minimises :func:`als_objective`, ``sum_{u,i} c_ui (p_ui - u_u^T y_i)^2 + l2 (||U||^2 + ||Y||^2)`` with
    preference ``p_ui = [x_ui > 0]`` and confidence ``c_ui = 1 + alpha x_ui`` over all user-item pairs, by
    alternating the exact ridge solutions

        u_u = (Y^T C_u Y + l2 I)^-1 Y^T C_u p_u,    y_i = (U^T C_i U + l2 I)^-1 U^T C_i p_i,

    each computed for all users (items) at once from ``Y^T C_u Y = Y^T Y + Y^T (C_u - I) Y`` (see
    :meth:`MFModel.fold_in`). Each half-sweep minimises the objective exactly over one block, so
    :attr:`MFModel.history` is non-increasing. ``l2`` enters as in the paper, unscaled by the number of
    interactions (that scaling is ALS-WR, Zhou et al. 2008). The default ``alpha = 1`` suits 0/1 clicks: the
    paper's 40 is for watch-time counts, and on ml-latest-small clicks (ratings >= 4, new users with 5 support
    clicks, Recall@20) alpha = 1 > 3 > 10 > 40 (0.287, 0.283, 0.273, 0.259 at ``l2 = 0.1``; ``l2 = 10`` adds
    about 0.01 more). Item factors start ``N(0, 0.01^2)`` from ``seed``.

    With ``missing_exponent = beta != 0`` a missing pair's confidence depends on the item, ``m_i`` proportional
    to ``(n_i + 1)^beta`` (``n_i`` its training interactions; :func:`missing_weights`), and an interaction's is
    ``m_i + alpha x_ui``: the popularity-weighted missing data of eALS (He et al., SIGIR 2016), who take ``beta >
    0`` (a popular item not interacted with is a surer negative). ``beta < 0`` trusts the absence of a popular
    item less, so the fold-in recommends popular items more readily.

    Args:
      X: the training interactions ``[n_train_users, n_items]`` (non-negative weights).
      factors: the rank ``f``.
      iterations: the number of ALS sweeps (users then items).
      l2: the ridge strength ``lambda`` (> 0).
      alpha: the confidence slope (>= 0; 0 is unweighted least squares on the 0/1 preferences).
      missing_exponent: ``beta``, the exponent of the item popularity in a missing pair's confidence (0: 1 for
        every pair, the paper's model).
      seed: the seed of the item-factor initialisation.
      on_sweep: called after each sweep (a progress bar's update), or None.

    Returns:
      The :class:`MFModel`.

    Raises:
      ValueError: if ``X`` is empty or holds non-finite or negative weights, or a hyper-parameter is out of range.
    """
    X = _train_matrix(X, nonnegative=True)
    for name, value in (("factors", factors), ("iterations", iterations)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    l2 = _positive(l2, "l2")
    alpha = _positive(alpha, "alpha", strict=False)
    if isinstance(missing_exponent, bool) or not np.isfinite(missing_exponent):
        raise ValueError(f"missing_exponent must be a finite number, got {missing_exponent!r}")
    m = missing_weights(X, missing_exponent) if missing_exponent else None
    Xt = X.T.tocsr()
    Y = np.random.default_rng(seed).normal(0.0, 0.01, (X.shape[1], int(factors)))
    history = []
    for _ in range(int(iterations)):
        U = _als_step(X, Y, l2, alpha, column_weights=m)
        Y = _als_step(Xt, U, l2, alpha, row_weights=m)
        history.append(als_objective(X, U, Y, l2=l2, alpha=alpha, missing_weights=m))
        if on_sweep is not None:
            on_sweep()
    return MFModel(item_factors=Y, user_factors=U, l2=l2, alpha=alpha, history=np.asarray(history), missing_weights=m)


def missing_weights(X: Any, exponent: float) -> np.ndarray:
    """The confidence of each item as a missing pair, ``m_i = (n_i + 1)^beta / mean_j (n_j + 1)^beta`` with
    ``n_i`` the item's interactions in ``X`` (a count, whatever their weights): mean 1 over the catalogue, so that
    ``beta`` moves weight between items and not the overall balance of missing and observed pairs that ``alpha``
    and ``l2`` set (He et al., SIGIR 2016, eq. 9, with the item count for the frequency).

    Args:
      X: the interactions ``[n_users, n_items]``.
      exponent: ``beta``.

    Returns:
      float64 ``[n_items]``.
    """
    X = _train_matrix(X, nonnegative=True)
    counts = np.diff(X.tocsc().indptr).astype(np.float64)
    m = np.power(counts + 1.0, float(exponent))
    return m / m.mean()


# ----------------------------------------------------------------------------------------------------------------
# content


@dataclasses.dataclass(frozen=True)
class ContentModel:
    """Content-based similarity from item side features (no interaction is needed to score an item).

    Attributes:
      features: float64 CSR ``[n_items, D]``, each item's (IDF-weighted) feature vector, rows of unit length (an
        item without features: a zero row, scored 0).
    """

    features: sp.csr_matrix

    @property
    def n_items(self) -> int:
        return int(self.features.shape[0])

    def scores(self, S: Any) -> np.ndarray:
        """Score the catalogue: ``cos(S F, f_i)``, the cosine between the user's profile (the summed feature vectors
        of their support items) and each item's feature vector.

        Args:
          S: the fold-in matrix ``[n_eval_users, n_items]``.

        Returns:
          float32 ``[n_eval_users, n_items]``.

        Raises:
          ValueError: if ``S`` has another number of items or non-finite weights.
        """
        S = _as_csr(S, "S", n_items=self.n_items)
        profile = (S @ self.features).toarray()
        profile /= np.maximum(np.linalg.norm(profile, axis=1, keepdims=True), 1e-12)
        return np.asarray(self.features @ profile.T, np.float32).T


def fit_content(features: Any, *, idf: bool = True) -> ContentModel:
    """Fit the content-based ranking of items by their side features (genres, year, ...): the classic answer to
    the item cold start (Pazzani & Billsus, *Content-Based Recommendation Systems*, 2007), since a new item has
    features on the day it is released and no interaction.

    ``score(u, i) = cos(sum_{j in support(u)} w * f_j, w * f_i)``, with ``w_d = log(n / n_d)`` the inverse
    document frequency of feature ``d`` over the ``n`` items when ``idf`` (else 1).

    Args:
      features: ``[n_items, D]`` non-negative item features (one-hot and multi-hot columns), sparse or dense.
      idf: weight each feature by its inverse document frequency.

    Returns:
      The :class:`ContentModel`.

    Raises:
      ValueError: if ``features`` is not a 2-D non-negative finite matrix, or no item has any feature.
    """
    F = _as_csr(features, "features", nonnegative=True)
    if F.nnz == 0:
        raise ValueError(f"features has no non-zero entry (shape {F.shape}): the items have no side features")
    if idf:
        frequency = np.diff(F.tocsc().indptr).astype(np.float64)
        weight = np.log(F.shape[0] / np.maximum(frequency, 1.0))
        F = (F @ sp.diags(weight)).tocsr()
    norms = np.sqrt(np.asarray(F.multiply(F).sum(axis=1)).ravel())
    F = (sp.diags(1.0 / np.maximum(norms, 1e-12)) @ F).tocsr()
    F.eliminate_zeros()
    return ContentModel(features=F)


# ----------------------------------------------------------------------------------------------------------------
# registry

#: The baselines by name: ``RETRIEVAL_BASELINES[name](X, **hyper).scores(S)``.
RETRIEVAL_BASELINES: dict[str, Callable[..., Any]] = {
    "popular": fit_popular,
    "itemknn": fit_itemknn,
    "ease": fit_ease,
    "mf": fit_mf,
}


def fit_baseline(name: str, X: Any, features: Any = None, **hyper: Any) -> Any:
    """Fit the baseline ``name``: one of :data:`RETRIEVAL_BASELINES` on ``X``, or ``"content"`` on ``features``.

    Raises:
      ValueError: if ``name`` is neither, or the baseline refuses its input or ``hyper``.
    """
    if name == "content":
        return fit_content(features, **hyper)
    if name not in RETRIEVAL_BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose one of {', '.join([*RETRIEVAL_BASELINES, 'content'])}")
    return RETRIEVAL_BASELINES[name](X, **hyper)


def support_matrix(items: Any, n_items: int, weights: Any = None) -> sp.csr_matrix:
    """The fold-in matrix ``S [U, n_items]`` of users' support items ``[U, E]`` (-1 = none), each of weight 1 or of
    its entry of ``weights [U, E]``."""
    items = np.asarray(items)
    users = np.repeat(np.arange(items.shape[0]), items.shape[1])
    flat = items.reshape(-1)
    real = flat >= 0
    values = None if weights is None else np.asarray(weights, np.float64).reshape(-1)[real]
    return interaction_matrix(users[real], flat[real], values, items.shape[0], n_items)
