"""Data: interaction logs (MovieLens loaders, text, JSON-lines and Parquet readers), the featurizer, cold-start
splits, tasks, the batch stream and augmentation.

>>> import jaxrec.data as jd
>>> ds = jd.load()  # the bundled ml-latest-small, offline
>>> print(ds.summary())  # doctest: +SKIP
"""

from jaxrec.data.dataset import DataError, Dataset, UnnamedColumnsError, from_dataframe
from jaxrec.data.download import ARCHIVES, DownloadError, download_archive
from jaxrec.data.featurizer import Featurizer, age_bucket, year_bucket, zip_prefix
from jaxrec.data.jsonlines import from_json_lines, is_json_lines
from jaxrec.data.logs import read_log
from jaxrec.data.movielens import DATASETS, DEFAULT_DATASET, default_data_root, load, parse_movielens
from jaxrec.data.parquet import from_parquet, is_parquet
from jaxrec.data.side import join_side_files, read_side_table, with_side_features
from jaxrec.data.tasks import SPLITS, ColdStartSplit, TaskSet, bucket_sizes, build_tasks, cold_start_split, task_batches
from jaxrec.data.text import from_csv, sniff_separator

__all__ = [
    "SPLITS",
    "ColdStartSplit",
    "TaskSet",
    "build_tasks",
    "bucket_sizes",
    "cold_start_split",
    "task_batches",
    "ARCHIVES",
    "DATASETS",
    "DEFAULT_DATASET",
    "DataError",
    "Dataset",
    "DownloadError",
    "Featurizer",
    "UnnamedColumnsError",
    "age_bucket",
    "default_data_root",
    "download_archive",
    "from_csv",
    "from_dataframe",
    "from_json_lines",
    "from_parquet",
    "is_json_lines",
    "is_parquet",
    "join_side_files",
    "load",
    "parse_movielens",
    "read_log",
    "read_side_table",
    "sniff_separator",
    "with_side_features",
    "year_bucket",
    "zip_prefix",
]
