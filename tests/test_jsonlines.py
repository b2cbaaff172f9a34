"""JSON-lines logs (``jaxrec.data.from_json_lines``, ``read_log``, ``recommend --users``): the same dataset as the
text log they hold, ids as written, only the role keys read, errors naming the file's line."""

import gzip
import json
from importlib import resources

import numpy as np
import pandas as pd
import pytest

import jaxrec.data as jd
from jaxrec.serve.batch import read_users

BUNDLED = resources.files("jaxrec.data") / "_bundled" / "ml-latest-small" / "ratings.csv.gz"
AMAZON = "user=reviewerID,item=asin,rating=overall,timestamp=unixReviewTime"


def write_lines(path, records, blank_after=()):
    """Records as JSON lines, a blank line after each index in ``blank_after``."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        for i, record in enumerate(records):
            f.write((record if isinstance(record, str) else json.dumps(record)) + "\n")
            if i in blank_after:
                f.write("\n")
    return path


def reviews(n_users=40, seed=0):
    """Amazon-review-like records: string ids with leading zeros and an X, a float rating, Unix times, and keys in no
    role (a name with quotes and a comma, a list, a long text)."""
    rng = np.random.default_rng(seed)
    out = []
    for u in range(n_users):
        for j, item in enumerate(rng.choice(60, size=int(rng.integers(2, 9)), replace=False)):
            out.append(
                {
                    "reviewerID": f"A{u:05d}",
                    "asin": f"{item:010d}" if item % 4 else f"B00{item:05d}X",
                    "reviewerName": 'Jo "J", Smith',
                    "helpful": [0, int(item)],
                    "reviewText": "words " * 200,
                    "overall": float(rng.integers(1, 6)),
                    "unixReviewTime": 1_400_000_000 + 86_400 * (u + j),
                }
            )
    return out


def test_a_review_log_is_the_dataset_of_the_same_rows_as_text(tmp_path):
    records = reviews()
    log = jd.read_log(write_lines(tmp_path / "reviews.jsonl.gz", records), AMAZON)
    table = pd.DataFrame(records)[["reviewerID", "asin", "overall", "unixReviewTime"]]
    table.to_csv(tmp_path / "reviews.csv", index=False)
    text = jd.read_log(tmp_path / "reviews.csv", AMAZON)
    pd.testing.assert_frame_equal(log.ratings, text.ratings)
    np.testing.assert_array_equal(log.user_ids, text.user_ids)
    np.testing.assert_array_equal(log.item_ids, text.item_ids)
    assert "0000000001" in log.item_ids.tolist() and "B0000000X" in log.item_ids.tolist()  # ids as written
    assert log.report["columns_read"] == ["reviewerID", "asin", "overall", "unixReviewTime"]
    assert log.n_ratings == len(records) and log.name == "reviews"
    # parsed a few lines at a time, the same rows, each error still naming its line
    small = jd.from_json_lines(tmp_path / "reviews.jsonl.gz", AMAZON, name="reviews")
    chunked, _, lines, labels = jd.jsonlines.read_json_lines_roles(tmp_path / "reviews.jsonl.gz", AMAZON, chunk_lines=7)
    assert lines.tolist() == list(range(1, len(records) + 1)) and "reviewText" in labels
    assert "blank_lines_skipped" not in log.report
    write_lines(tmp_path / "gaps.jsonl", records, blank_after={0, 5})
    assert jd.read_log(tmp_path / "gaps.jsonl", AMAZON).report["blank_lines_skipped"] == 2  # counted, as text's
    pd.testing.assert_series_equal(chunked["asin"], pd.Series([r["asin"] for r in records], name="asin"))
    pd.testing.assert_frame_equal(small.ratings, log.ratings)


def test_the_bundled_ratings_as_json_lines_are_the_same_dataset_by_common_names(tmp_path):
    frame = pd.read_csv(BUNDLED)
    path = tmp_path / "ratings.ndjson"
    frame.to_json(path, orient="records", lines=True)
    assert jd.is_json_lines(path) and not jd.is_json_lines(BUNDLED)
    log = jd.read_log(path, feedback="implicit", positive_threshold=4.0)
    text = jd.from_csv(BUNDLED, feedback="implicit", positive_threshold=4.0)
    pd.testing.assert_frame_equal(log.ratings, text.ratings)
    np.testing.assert_array_equal(log.item_ids, text.item_ids)  # integer ids, as the text log's
    assert log.item_ids.dtype == text.item_ids.dtype


def test_ids_are_read_as_written_whole_numbers_as_integers(tmp_path):
    """A float column exported as JSON writes 7 as 7.0: the same item as 7; the string "007" is another."""
    records = [
        {"user": "u1", "item": 7, "weight": 1},
        {"user": "u1", "item": "007", "weight": 2},
        {"user": "u2", "item": 7.0, "weight": 3},
        {"user": 5, "item": "sku-1", "weight": 1.5},
    ]
    log = jd.read_log(write_lines(tmp_path / "plays.jsonl", records), feedback="implicit")
    assert sorted(log.item_ids.tolist()) == ["007", "7", "sku-1"] and sorted(log.user_ids.tolist()) == ["5", "u1", "u2"]
    seven = log.ratings[log.ratings["item"] == log.item_ids.tolist().index("7")]
    assert sorted(seven["weight"].tolist()) == [1.0, 3.0]


@pytest.mark.parametrize(
    "bad, message",
    [
        ('{"user": "u3", "item": "c" "weight": 1}', r"line 4 is not valid JSON: Expecting ',' delimiter at column 28"),
        ('["u3", "c", 1]', r"line 4 is not a JSON object \('\[\"u3\", \"c\", 1\]'\): expected one JSON object a line"),
        (
            "{",
            r"line 4 is not valid JSON: .* \(a record printed over several lines: JSON lines hold one object a line\)",
        ),
        ("{'user': 'u3', 'item': 'c'}", r"line 4 is not valid JSON: .*\(single quotes: a Python dict, not JSON"),
        ('{"user": "u3", "item": "c", "weight": ""}', r"column 'weight' line 4 is missing"),
        ('{"user": "u3", "weight": 1}', r"column 'item' line 4 has a missing item id"),
        ('{"user": {"id": 3}, "item": "c", "weight": 1}', r"key 'user' line 4 holds \{\"id\": 3\}, not an id"),
        ('{"user": "u3", "item": true, "weight": 1}', r"key 'item' line 4 holds true, not an id"),
        ('{"user": "u3", "item": "c", "weight": [1]}', r"key 'weight' line 4 holds \[1\], not a weight"),
        ('{"user": "u3", "item": "c", "weight": "lots"}', r"column 'weight' line 4 .*'lots'"),
    ],
)
def test_a_bad_record_is_named_by_its_line(tmp_path, bad, message):
    good = [{"user": "u1", "item": "a", "weight": 1}, {"user": "u2", "item": "b", "weight": 2}]
    path = write_lines(tmp_path / "plays.jsonl", [*good, bad], blank_after={0})  # line 2 is blank
    with pytest.raises(jd.DataError, match=message):
        jd.read_log(path, feedback="implicit")
    assert str(path) in str(pytest.raises(jd.DataError, jd.read_log, path, feedback="implicit").value)


def test_what_a_json_lines_log_cannot_be_read_as_is_said(tmp_path):
    path = write_lines(tmp_path / "plays.jsonl", [{"visitor": "u1", "sku": "a"}, {"visitor": "u2", "sku": "b"}])
    with pytest.raises(jd.UnnamedColumnsError, match=r"no user column among the records' keys \['visitor', 'sku'\]"):
        jd.read_log(path, feedback="implicit")
    with pytest.raises(jd.DataError, match=r"no record holds the key\(s\) 'when' \(for 'timestamp'\); the records'"):
        jd.read_log(path, "user=visitor,item=sku,timestamp=when", feedback="implicit")
    with pytest.raises(jd.DataError, match=r"JSON lines name their keys: give columns as role=key"):
        jd.read_log(path, "user,item", feedback="implicit")
    with pytest.raises(jd.DataError, match=r"a JSON-lines log has no separator; drop sep="):
        jd.read_log(path, "user=visitor,item=sku", sep=",", feedback="implicit")
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"user": "u1", "item": "a"}\n{"user": "u2", "item": "Mis\u00e9rables"}\n'.encode("latin-1"))
    with pytest.raises(jd.DataError, match=r"latin.jsonl: line 2 is not utf-8 text .*--encoding latin-1"):
        jd.read_log(latin, feedback="implicit")
    assert "Misérables" in jd.read_log(latin, feedback="implicit", encoding="latin-1").item_ids.tolist()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("{}\n")  # one object without keys: no user column
    with pytest.raises(jd.DataError, match="no user column"):
        jd.read_log(empty, feedback="implicit")


def test_new_users_in_json_lines_are_read_as_a_text_file_of_them_is(tmp_path):
    records = [
        {"user": "n1", "item": "0000000001", "ts": 20, "note": "x"},
        {"user": "n1", "item": "B0000000X", "ts": 10},
        {"user": "n2", "item": 3, "ts": 5},
    ]
    users = read_users(
        write_lines(tmp_path / "new.jsonl", records, blank_after={1}), "user=user,item=item,timestamp=ts"
    )
    assert users["user"].tolist() == ["n2", "n1", "n1"] and users["item"].tolist() == ["3", "B0000000X", "0000000001"]
    assert users["line"].tolist() == [4, 2, 1] and users.attrs["ignored_columns"] == ["note"]
    with pytest.raises(jd.DataError, match=r"new.jsonl: a JSON-lines file has no separator"):
        read_users(tmp_path / "new.jsonl", sep=",")
    # one user's --ratings file is CSV or a list of ids: a JSON-lines one was split at its commas
    from jaxrec.experiment.recommend import read_user_ratings
    from jaxrec.experiment.run import RunError

    with pytest.raises(RunError, match=r"new.jsonl: a JSON-lines file; --ratings takes item,rating lines .*--users"):
        read_user_ratings(tmp_path / "new.jsonl", np.array(["3"]), None, implicit=True)


def test_a_log_read_as_ratings_says_what_its_duplicates_would_have_been_as_interactions(caplog):
    """A JSON-lines log read with feedback=None (ratings) keeps the latest of each repeated pair; given to a top-N
    experiment, each repeat's count was lost without a word (read as interactions, they add up)."""
    from jaxrec.experiment import ExperimentConfig
    from jaxrec.experiment.topn import implicit_dataset

    log = pd.DataFrame({"user": ["u", "u", "v"], "item": ["a", "a", "b"], "rating": [4.0, 5.0, 3.0]})
    rated = jd.from_dataframe(log, name="plays")
    with caplog.at_level("WARNING", logger="jaxrec.experiment.topn"):
        implicit_dataset(ExperimentConfig.make(feedback="implicit"), rated)
    assert "plays: read as ratings, the log kept the latest of 1 duplicate (user, item) row(s)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="jaxrec.experiment.topn"):
        implicit_dataset(ExperimentConfig.make(feedback="implicit"), jd.from_dataframe(log.iloc[1:], name="plays"))
    assert "duplicate" not in caplog.text


def test_a_key_that_later_records_bring_is_read_from_every_chunk(tmp_path):
    """Roles were resolved from the first chunk's keys: a rating from record 3 on was refused when named, and left
    out unsaid when guessed (the log read as implicit)."""
    records = [{"user": "u1", "item": "a"}, {"user": "u1", "item": "b"}]
    records += [{"user": f"u{i}", "item": "c", "rating": 4.0} for i in range(2, 6)]
    path = write_lines(tmp_path / "late.jsonl", records)
    for columns in ("user=user,item=item,rating=rating", None):
        frame, roles, _, labels = jd.jsonlines.read_json_lines_roles(path, columns, chunk_lines=2)
        assert roles["rating"] == "rating" and labels == ["user", "item", "rating"]
        assert frame["rating"].isna().tolist() == [True, True, False, False, False, False]


def test_values_pandas_would_change_are_ids_and_times_as_written(tmp_path):
    """true beside 1 was one value to pandas (the item 1); keys such as "10" became numbers; before pandas 3 a key
    named like a date became datetimes, its unit guessed per chunk; an id beyond 2^53 beside a fraction became a float
    and met its neighbour."""
    with pytest.raises(jd.DataError, match=r"key 'item' line 2 holds true, not an id"):
        jd.read_log(write_lines(tmp_path / "b.jsonl", [{"user": "u", "item": 1}, {"user": "v", "item": True}]))
    keys = write_lines(tmp_path / "k.jsonl", [{"10": "u1", "20": "a"}, {"10": "u2", "20": "b"}])
    assert jd.read_log(keys, "user=10,item=20", feedback="implicit").item_ids.tolist() == ["a", "b"]
    times = [{"user": "u", "item": i, "timestamp": t} for i, t in enumerate([1_400_000_000_000, 1_400_000_000])]
    log = jd.read_log(write_lines(tmp_path / "t.jsonl", times), feedback="implicit")
    assert sorted(log.ratings["timestamp"].tolist()) == [1_400_000_000, 1_400_000_000_000]  # as written, each
    times[1]["timestamp"] = ""  # a JSON writer's missing value: said as missing, not as a date in another form
    with pytest.raises(jd.DataError, match=r"'timestamp' line 2 is missing \(NaN\) \(1 bad value\(s\) in total\)$"):
        jd.read_log(write_lines(tmp_path / "t2.jsonl", times), feedback="implicit")
    big = [{"user": "u", "item": 2**53 + 1}, {"user": "u", "item": 2**53}, {"user": "v", "item": 1.5}]
    with pytest.raises(jd.DataError, match=r"key 'item' line 1 holds 9.0072e\+15 \(a float: give large ids"):
        jd.read_log(write_lines(tmp_path / "big.jsonl", big), feedback="implicit")
    exact = jd.read_log(write_lines(tmp_path / "exact.jsonl", big[:2]), feedback="implicit")
    assert sorted(exact.item_ids.tolist()) == [2**53, 2**53 + 1]
    inf = tmp_path / "inf.jsonl"
    inf.write_text('{"user": "u", "item": 1.5}\n{"user": "v", "item": Infinity}\n')
    with pytest.raises(jd.DataError, match=r"key 'item' line 2 holds inf"):
        jd.read_log(inf, feedback="implicit")


def test_a_text_log_whose_first_id_opens_a_brace_is_still_text(tmp_path):
    guid = tmp_path / "guid.csv"
    guid.write_text("{3F25-01},i1,5\n{3F25-02},i2,4\n")
    assert not jd.is_json_lines(guid)
    assert jd.read_log(guid).user_ids.tolist() == ["{3F25-01}", "{3F25-02}"]
    array = tmp_path / "reviews.json"
    array.write_text('[{"user": "u", "item": "a"},\n {"user": "v", "item": "b"}]\n')
    assert jd.is_json_lines(array)  # named JSON: the reader says what it is not
    with pytest.raises(jd.DataError, match=r"reviews.json: line 1 is not a JSON object .*the file holds a JSON array"):
        jd.read_log(array, feedback="implicit")
