"""Parquet logs (``jaxrec.data.from_parquet``, ``read_log``, ``jaxrec train --data x.parquet``): the same dataset as
the text log they hold, ids of their own type, only the named columns read, partitioned folders, clear errors."""

import datetime
import json
import sys
from decimal import Decimal
from importlib import resources

import numpy as np
import pandas as pd
import pytest
from cli_support import TOPN_FLAGS, write_plays

import jaxrec.data as jd
from jaxrec import cli

pa = pytest.importorskip("pyarrow", reason="Parquet logs need pyarrow (pip install 'jaxrec[parquet]')")
pq = pytest.importorskip("pyarrow.parquet")

BUNDLED = resources.files("jaxrec.data") / "_bundled" / "ml-latest-small" / "ratings.csv.gz"


def same_dataset(a: jd.Dataset, b: jd.Dataset) -> None:
    pd.testing.assert_frame_equal(a.ratings, b.ratings)
    np.testing.assert_array_equal(a.user_ids, b.user_ids)
    np.testing.assert_array_equal(a.item_ids, b.item_ids)
    read = ("columns_read", "header_line_read", "blank_lines_skipped")
    assert {k: v for k, v in a.report.items() if k not in read} == {k: v for k, v in b.report.items() if k not in read}


def test_the_bundled_ratings_as_parquet_are_the_same_dataset(tmp_path):
    text = jd.from_csv(BUNDLED)
    path = tmp_path / "ratings.parquet"
    pd.read_csv(BUNDLED).to_parquet(path)  # pandas' index is stored too: not a column of the log
    log = jd.from_parquet(path)
    same_dataset(log, text)
    assert log.n_ratings == 100836 and log.report["columns_read"] == ["userId", "movieId", "rating", "timestamp"]
    implicit = jd.read_log(path, feedback="implicit", positive_threshold=4.0)
    same_dataset(implicit, jd.from_csv(BUNDLED, feedback="implicit", positive_threshold=4.0))
    assert implicit.report["below_threshold_dropped"] == 100836 - implicit.n_ratings > 0


def test_ids_keep_their_type_times_their_zone_and_duplicates_are_merged(tmp_path):
    when = pd.to_datetime(
        ["2024-01-01 10:00", "2024-01-02 00:00", "2024-01-03 00:00", "2024-01-01 00:00", "2024-01-05 00:00"]
    )
    table = pa.table(
        {
            "customer": ["00001", "1", "00001", "b", "b"],
            "sku": pa.array([10, 20, 10, 30, 20], pa.int32()),
            "qty": pa.array([Decimal("1.5"), Decimal(2), Decimal(1), Decimal(1), Decimal(3)], pa.decimal128(5, 1)),
            "when": pa.array(when.tz_localize("Europe/Paris")),
            "note": ["x", "y", "z", "w", "v"],
        }
    )
    path = tmp_path / "orders.bin"  # known by its magic bytes, whatever its name
    pq.write_table(table, path)
    assert jd.is_parquet(path) and not jd.is_parquet(BUNDLED)
    log = jd.read_log(path, "user=customer,item=sku,weight=qty,timestamp=when", feedback="implicit")
    assert log.user_ids.tolist() == ["00001", "1", "b"]  # text ids stay text: two users, not one
    assert log.item_ids.tolist() == [10, 20, 30]
    assert log.report["columns_read"] == ["customer", "sku", "qty", "when"]  # "note" is not read
    assert log.report["duplicates_merged"] == 1 and log.n_ratings == 4
    first = log.ratings[(log.ratings["user"] == 0) & (log.ratings["item"] == 0)].iloc[0]
    assert first["weight"] == 2.5  # 1.5 + 1, at the earlier time: 10:00 in Paris is 09:00 UTC
    assert first["timestamp"] == int(pd.Timestamp("2024-01-01 09:00", tz="UTC").timestamp())


def test_roles_in_file_order_and_a_partitioned_folder(tmp_path):
    frame = pd.DataFrame(
        {"visitor": ["v1", "v2", "v3", "v1"], "venue": ["a", "b", "a", "c"], "day": ["d1", "d1", "d2", "d2"]}
    )
    path = tmp_path / "checkins.parquet"
    frame.to_parquet(path, index=False)
    log = jd.read_log(path, "user,item,_", feedback="implicit")
    assert log.n_ratings == 4 and log.user_ids.tolist() == ["v1", "v2", "v3"] and not log.has_timestamps
    folder = tmp_path / "by_day"
    pq.write_to_dataset(pa.Table.from_pandas(frame, preserve_index=False), folder, partition_cols=["day"])
    assert jd.is_parquet(folder)
    same_dataset(jd.read_log(folder, "user=visitor,item=venue", feedback="implicit"), log)
    with pytest.raises(jd.DataError, match=r"by_day: no user column among the header \['visitor', 'venue', 'day'\]"):
        jd.read_log(folder, feedback="implicit")
    # dates as days, dictionary-encoded ids (pandas' categoricals)
    table = pa.table(
        {
            "user": pa.array(["a", "b", "a"]).dictionary_encode(),
            "item": [1, 2, 2],
            "date": pa.array([datetime.date(2024, 1, 2)] * 3, pa.date32()),
        }
    )
    pq.write_table(table, tmp_path / "days.parquet")
    days = jd.read_log(tmp_path / "days.parquet", feedback="implicit")
    assert days.user_ids.tolist() == ["a", "b"]
    assert (days.ratings["timestamp"] == int(pd.Timestamp("2024-01-02", tz="UTC").timestamp())).all()


@pytest.mark.parametrize(
    ("table", "columns", "message"),
    [
        ({"user": [1.0, 2.0, None], "item": [1, 2, 3]}, None, r"bad.parquet: column 'user' row 2 has a missing user"),
        ({"user": [1.0, 2.5], "item": [1, 2]}, None, r"bad.parquet: column 'user' row 1 holds 2.5, not a whole user"),
        (
            {"user": [[1], [2]], "item": [1, 2]},
            None,
            r"bad.parquet: column 'user' \(the user\) is of Parquet type list",
        ),
        ({"user": [1, 2], "item": [1, 2], "plays": [3, -1]}, None, r"bad.parquet: column 'plays' row 1 holds -1"),
        ({"who": [1], "item": [2]}, None, r"bad.parquet: no user column among the header \['who', 'item'\].*--columns"),
        (
            {"user_id": [1], "item_id": [2], "mood": ["x"]},
            None,
            r"unexpected extra column\(s\) \['mood'\].*--columns user=user_id,item=item_id: the others .* weight=mood",
        ),
        ({"who": [1], "item": [2]}, "user=whom,item=item", r"bad.parquet: missing column 'whom' \(for 'user'\)"),
        ({"who": [1], "item": [2]}, "user=who,item", r"mixes role=column entries with roles in file order"),
    ],
)
def test_bad_logs_are_named_with_their_column_and_row(tmp_path, table, columns, message):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table(table), path)
    with pytest.raises(jd.DataError, match=message):
        jd.read_log(path, columns, feedback="implicit")


def test_what_is_not_a_parquet_log_is_refused_clearly(tmp_path, monkeypatch):
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 and then no footer")
    with pytest.raises(jd.DataError, match=r"broken.parquet: not a readable Parquet file"):
        jd.read_log(broken)
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"user": [1], "item": [2]}), good)
    with pytest.raises(jd.DataError, match=r"good.parquet: a Parquet log has no separator"):
        jd.read_log(good, sep=",")
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        jd.DataError, match=r"empty: a folder without Parquet files \(a log is a file, or a folder of Parquet files\)"
    ):
        jd.read_log(tmp_path / "empty")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if pyarrow were not installed
    with pytest.raises(jd.DataError, match=r"pip install 'jaxrec\[parquet\]'"):
        jd.read_log(good)


def test_train_reads_a_parquet_log_as_its_text_twin(tmp_path, monkeypatch):
    """The command on a play log and on the same log as Parquet: the same split and the same figures."""
    monkeypatch.setattr(cli, "_echo", lambda *parts, err=False: None)
    text = write_plays(tmp_path / "plays.tsv", users=60)
    frame = pd.read_csv(text, sep="\t")
    frame["time"] = pd.to_datetime(frame["time"], unit="s")  # a real timestamp column
    frame.to_parquet(tmp_path / "plays.parquet", index=False)
    flags = [*TOPN_FLAGS, "--epochs", "1", "--topn-baselines", "popular,itemknn"]
    named = "user=user,item=song,weight=plays,timestamp=time"
    runs = {}
    for name, columns in (("plays.tsv", "user,item,weight,timestamp"), ("plays.parquet", named)):
        out = tmp_path / f"run-{name}"
        code = cli.main(["train", "--data", str(tmp_path / name), "--columns", columns, *flags, "--out", str(out)])
        assert code == 0
        runs[name] = json.loads((out / "metrics.json").read_text())
    tsv, parquet = runs["plays.tsv"], runs["plays.parquet"]
    assert parquet["split"] == tsv["split"]
    assert parquet["scenarios"]["new_user"]["maml"]["recall@20"] == tsv["scenarios"]["new_user"]["maml"]["recall@20"]
    assert parquet["scenarios"]["new_user"]["itemknn"] == tsv["scenarios"]["new_user"]["itemknn"]
    assert parquet["data_report"]["duplicates_merged"] == tsv["data_report"]["duplicates_merged"] == 60


def test_partition_keys_are_text_and_other_files_are_left_out_by_name(tmp_path, caplog):
    frame = pd.DataFrame({"user": ["007", "7", "007", "010"], "item": [1, 2, 3, 1]})
    folder = tmp_path / "by_user"
    pq.write_to_dataset(pa.Table.from_pandas(frame, preserve_index=False), folder, partition_cols=["user"])
    (folder / "notes.csv").write_text("who wrote this\n")
    with caplog.at_level("WARNING", logger="jaxrec.data.parquet"):
        log = jd.read_log(folder, feedback="implicit")
    assert log.user_ids.tolist() == ["007", "010", "7"]  # a folder name is text: 007 and 7 are two users
    assert log.n_ratings == 4 and log.report["files_skipped"] == 1
    assert "1 file(s) that are not Parquet left out: notes.csv" in caplog.text


def test_a_folder_names_the_file_of_a_bad_row_or_a_disagreeing_type(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    pq.write_table(pa.table({"user": ["a", "b"], "item": [1, 2], "plays": [1, 2]}), folder / "part-0.parquet")
    pq.write_table(pa.table({"user": ["c", "d"], "item": [3, 4], "plays": [5, 0]}), folder / "part-1.parquet")
    with pytest.raises(jd.DataError, match=r"column 'plays' row 3 holds 0.*part-1.parquet, its row 1\)"):
        jd.read_log(folder, feedback="implicit")
    pq.write_table(pa.table({"user": ["e"], "item": ["s299"], "plays": [1]}), folder / "part-2.parquet")
    with pytest.raises(jd.DataError, match=r"part-2.parquet: cannot read columns \['user', 'item', 'plays'\]"):
        jd.read_log(folder, feedback="implicit")


@pytest.mark.parametrize(
    ("column", "message"),
    [
        (pa.array([1, 2], pa.duration("s")), r"column 'when' \(the timestamp\) is of Parquet type duration"),
        (pa.array([3600, 7200], pa.time32("s")), r"column 'when' \(the timestamp\) is of Parquet type time32"),
        (pa.array([datetime.datetime(2024, 1, 1), None], pa.timestamp("us")), r"column 'when' row 1 is missing"),
    ],
)
def test_a_timestamp_is_a_point_in_time_and_never_missing(tmp_path, column, message):
    path = tmp_path / "times.parquet"
    pq.write_table(pa.table({"user": ["a", "b"], "item": [1, 2], "when": column}), path)
    with pytest.raises(jd.DataError, match=message):
        jd.read_log(path, "user=user,item=item,timestamp=when", feedback="implicit")


def test_an_empty_id_or_one_column_in_two_roles_is_refused(tmp_path):
    path = tmp_path / "ids.parquet"
    pq.write_table(pa.table({"user": ["a", " ", "b"], "item": [1, 2, 3]}), path)
    with pytest.raises(jd.DataError, match=r"column 'user' row 1 has a missing user id"):
        jd.read_log(path, feedback="implicit")
    with pytest.raises(jd.DataError, match=r"reads column 'user' as both user and item"):
        jd.read_log(path, "user=user,item=user", feedback="implicit")
