"""Interaction logs: MovieLens loaders, generic readers and the featurizer.

>>> import jaxrec.datasets as jd
>>> ds = jd.load()  # the bundled ml-latest-small, offline
>>> print(ds.summary())  # doctest: +SKIP
"""

from jaxrec.datasets.dataset import DataError, Dataset, from_csv, from_dataframe, sniff_separator
from jaxrec.datasets.download import ARCHIVES, DownloadError, download_archive
from jaxrec.datasets.features import Featurizer, age_bucket, year_bucket, zip_prefix
from jaxrec.datasets.movielens import DATASETS, DEFAULT_DATASET, default_data_root, load, parse_movielens

__all__ = [
    "ARCHIVES",
    "DATASETS",
    "DEFAULT_DATASET",
    "DataError",
    "Dataset",
    "DownloadError",
    "Featurizer",
    "age_bucket",
    "default_data_root",
    "download_archive",
    "from_csv",
    "from_dataframe",
    "load",
    "parse_movielens",
    "sniff_separator",
    "year_bucket",
    "zip_prefix",
]
