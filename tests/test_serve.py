"""``jaxrec serve`` as a real process over HTTP: the answers equal the library's, concurrent requests share compiled
calls without changing any answer, nothing compiles after start-up, every bad request is a 4xx that names the
problem and leaves the service answering others, and the demo page works in a real headless Chromium (search, rate,
the top-10 follows each rating; ``JAXREC_SCREENSHOT=path.png`` keeps a screenshot of it, the README's)."""

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from cli_support import TOPN_FLAGS, write_plays
from serve_support import BUCKET_FLAGS, Server, free_port, train_movielens

from jaxrec import cli
from jaxrec.evaluation import retrieval_baselines as rb
from jaxrec.evaluation.topn import fold_in_weights
from jaxrec.experiment.recommend import Recommender, TopNRecommender
from jaxrec.experiment.trained import RECENCY_FILE, load_trained
from jaxrec.serve import Catalogue
from jaxrec.serve.requests import RequestError

pytest.importorskip("fastapi", reason="the serve extra (pip install 'jaxrec[serve]') is not installed")
try:
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # the browser test says so when it skips
    webdriver = None

TOY_STORY, JUMANJI, STAR_WARS, MATRIX = 1, 2, 260, 2571


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_movielens(tmp_path_factory.mktemp("serve") / "run")


@pytest.fixture(scope="module")
def server(run):
    server = Server(run, *BUCKET_FLAGS, "--max-body-kb", "16")
    yield server
    server.stop()


def ratings(*pairs):
    return [{"item": item, "rating": rating} for item, rating in pairs]


def test_health_describes_the_model_and_every_bucket_is_compiled_at_start_up(server):
    status, health = server.get("/health")
    assert status == 200 and health["status"] == "ok"
    assert health["feedback"] == "explicit" and health["rating_range"] == [0.5, 5.0] and health["titles"]
    assert health["items"] > 9000 and health["max_items"] == 32
    assert health["compiled_shapes"] == 4  # batch {1, 8} x support {8, 32}


def test_recommend_equals_the_library_recommender_and_excludes_the_rated_items(server, run):
    sent = ratings((TOY_STORY, 5), (JUMANJI, 2.5), (STAR_WARS, 4))
    status, answer = server.post("/recommend", {"ratings": sent, "k": 10})
    assert status == 200, answer
    trained = load_trained(run)
    catalogue = Catalogue(trained)
    codes = np.array([catalogue.code(i) for i in (TOY_STORY, JUMANJI, STAR_WARS)])
    best, scores = Recommender(trained, trained.params).top_k(codes, np.array([5, 2.5, 4], np.float32), 10)
    assert [r["item"] for r in answer["recommendations"]] == [catalogue.ids[c] for c in best]
    np.testing.assert_allclose([r["score"] for r in answer["recommendations"]], scores, rtol=1e-5, atol=1e-5)
    assert all(r["title"] for r in answer["recommendations"])
    assert not {TOY_STORY, JUMANJI, STAR_WARS} & {r["item"] for r in answer["recommendations"]}
    assert answer["input"] == {"used": 3, "unknown": 0, "unknown_items": [], "duplicates": 0, "below_threshold": 0}


def test_a_file_of_users_ratings_gets_each_user_the_recommenders_list_with_titles(run, tmp_path):
    """``jaxrec recommend --users`` on a rating model: each user's list is the library recommender's, titled."""
    from jaxrec.data import DataError
    from jaxrec.serve.batch import read_users, recommend_users

    trained = load_trained(run)
    catalogue = Catalogue(trained)
    wanted = {"7": [(TOY_STORY, 5.0), (JUMANJI, 2.5)], "8": [(STAR_WARS, 4.0), (MATRIX, 4.5), (TOY_STORY, 1.0)]}
    table = tmp_path / "users.csv"
    table.write_text("userId,movieId,rating\n" + "".join(f"{u},{i},{r}\n" for u, rs in wanted.items() for i, r in rs))
    lists, report = recommend_users(trained, read_users(table), 5)
    assert (
        report["users"] == 2
        and report["unknown"] == 0
        and set(lists.columns) == {"user", "rank", "item", "score", "title"}
    )
    for user, sent in wanted.items():
        codes = np.array([catalogue.code(i) for i, _ in sent])
        best, scores = Recommender(trained, trained.params).top_k(codes, np.array([r for _, r in sent], np.float32), 5)
        got = lists[lists["user"] == user]
        assert got["item"].tolist() == [catalogue.ids[c] for c in best]
        assert got["title"].tolist() == [catalogue.titles[c] for c in best]
        np.testing.assert_allclose(got["score"].to_numpy(), scores, rtol=1e-5, atol=1e-5)
    bare = tmp_path / "bare.csv"
    bare.write_text("userId,movieId,stars\n7,1,4\n")
    with pytest.raises(ValueError, match=r"the file needs a rating column \(the file's other columns: \['stars'\]"):
        recommend_users(trained, read_users(bare), 5)
    bare.write_text("userId,movieId,plays\n7,1,4\n")
    with pytest.raises(ValueError, match="this model predicts ratings: a weight column is not a rating"):
        recommend_users(trained, read_users(bare), 5)
    table.write_text("userId,movieId,rating\n7,1,4\n\n7,2,9\n")
    with pytest.raises(ValueError, match=r"line 4 \(user '7'\): rating 9 is outside the model's rating scale"):
        recommend_users(trained, read_users(table), 5)
    # Parquet: a float column of whole numbers (an integer column with a gap) is the integer ids; a missing id is named
    pytest.importorskip("pyarrow")
    parquet = tmp_path / "users.parquet"
    pd.DataFrame({"userId": [7.0, 7.0], "movieId": [1.0, 2.0], "rating": [5.0, 2.5]}).to_parquet(parquet)
    lists, _ = recommend_users(trained, read_users(parquet), 5)
    assert set(lists["user"]) == {"7"}
    best = Recommender(trained, trained.params).top_k(
        np.array([catalogue.code(1), catalogue.code(2)]), np.array([5, 2.5], np.float32), 5
    )[0]
    assert lists["item"].tolist() == [catalogue.ids[c] for c in best]
    pd.DataFrame({"userId": [7.0, None], "movieId": [1, 2], "rating": [5.0, 2.5]}).to_parquet(parquet)
    with pytest.raises(DataError, match="users.parquet: row 1: the user id is missing"):
        read_users(parquet)


def test_a_predicted_rating_beyond_the_scale_is_clipped_to_it_and_ranked_by_the_score(run):
    """A 1-100 log's model printed 'predicted 103.87' and /predict answered -13.5, while MAE clips a prediction to
    the scale. The list is ranked by the model's score, each prediction shown on the scale."""
    from jaxrec.serve.engine import ServingModel, UserInput

    trained = load_trained(run)
    recommender = Recommender(trained, trained.params)
    n = trained.featurizer.n_items
    lifted = jnp.linspace(-20.0, 30.0, n)  # beyond the 0.5-5 scale at both ends, every score distinct
    recommender._scores = lambda *args: lifted
    best, shown = recommender.top_k(np.array([0, 1]), np.array([4.0, 2.0], np.float32), 5)
    assert best.tolist() == list(range(n - 1, n - 6, -1)) and shown.tolist() == [5.0] * 5
    served = ServingModel(trained, (1,), (8,), max_k=5)
    original = served.recommender.score_one
    served.recommender.score_one = lambda *args: original(*args) * 0 + lifted
    ranked = served.rank(
        [UserInput(np.array([0, 1]), np.array([4.0, 2.0], np.float32), k=5, probe=np.array([2, n - 3]))]
    )[0]
    assert ranked.codes.tolist() == best.tolist() and ranked.scores.tolist() == [5.0] * 5
    assert ranked.probe_scores.tolist() == [0.5, 5.0]


def test_unknown_and_repeated_items_are_ignored_and_counted(server):
    sent = ratings((TOY_STORY, 1), (TOY_STORY, 5), (-7, 3), ("not-a-film", 4), (MATRIX, 4))
    status, answer = server.post("/recommend", {"ratings": sent, "k": 5})
    assert status == 200, answer
    report = answer["input"]
    assert report["used"] == 2 and report["unknown"] == 2 and report["duplicates"] == 1
    assert report["unknown_items"] == [-7, "not-a-film"]
    same = server.post("/recommend", {"ratings": ratings((MATRIX, 4), (TOY_STORY, 5)), "k": 5})[1]
    assert set(r["item"] for r in same["recommendations"]) == set(r["item"] for r in answer["recommendations"])


def test_predict_scores_the_candidates_like_the_top_k(server):
    sent = ratings((TOY_STORY, 5), (MATRIX, 1))
    top = server.post("/recommend", {"ratings": sent, "k": 3})[1]["recommendations"]
    status, answer = server.post("/predict", {"ratings": sent, "candidates": [r["item"] for r in top] + ["nope"]})
    assert status == 200, answer
    np.testing.assert_allclose([s["score"] for s in answer["scores"][:3]], [r["score"] for r in top], rtol=1e-5)
    assert answer["scores"][3] == {"item": "nope", "score": None} and answer["unknown_candidates"] == 1


def test_search_finds_films_by_title(server):
    status, answer = server.get("/items?q=toy%20story&limit=5")
    assert status == 200
    titles = [i["title"] for i in answer["items"]]
    assert titles[0] == "Toy Story (1995)" and all("toy story" in t.lower() for t in titles)
    assert server.get("/items?q=zzzzqqq")[1]["items"] == []


def test_concurrent_requests_share_compiled_calls_and_get_their_own_answers(server):
    users = [ratings((TOY_STORY, 1 + u % 5), (MATRIX, 5 - u % 4), (STAR_WARS + 0, 0.5 + u % 9 / 2)) for u in range(24)]
    alone = [server.post("/recommend", {"ratings": r, "k": 10})[1]["recommendations"] for r in users[:6]]
    before = server.get("/health")[1]
    with ThreadPoolExecutor(24) as pool:
        together = list(pool.map(lambda r: server.post("/recommend", {"ratings": r, "k": 10}), users))
    after = server.get("/health")[1]
    assert all(status == 200 for status, _ in together)
    for mine, (_, answer) in zip(alone, together, strict=False):
        assert [r["item"] for r in answer["recommendations"]] == [r["item"] for r in mine]
        np.testing.assert_allclose(
            [r["score"] for r in answer["recommendations"]], [r["score"] for r in mine], rtol=1e-5, atol=1e-5
        )
    assert after["requests"] - before["requests"] == 24
    assert after["batches"] - before["batches"] < 24  # requests shared calls
    assert after["compiled_shapes"] == before["compiled_shapes"] == 4  # and nothing compiled while serving


def test_the_demo_page_and_the_api_description_are_served(server):
    status, page = server.get("/")
    assert status == 200 and "<title>jaxrec" in page and "/recommend" in page
    status, spec = server.get("/openapi.json")
    assert status == 200 and {"/recommend", "/predict", "/items", "/health"} <= set(spec["paths"])


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b"{not json", 422, "not valid JSON"),
        (b"", 422, "body"),
        (b"[1, 2, 3]", 422, "dictionary"),
        (b'{"ratings": {"item": 1}}', 422, "ratings"),
        (b'{"ratings": [{"item": 1.5, "rating": 4}]}', 422, "ratings.0.item"),
        (b'{"ratings": [{"item": true, "rating": 4}]}', 422, "ratings.0.item"),
        (json.dumps({"ratings": [{"item": "x" * 300, "rating": 4}]}).encode(), 422, "ratings.0.item: String should"),
        (b'{"ratings": [{"item": 1, "rating": "4"}]}', 422, "ratings.0.rating"),
        (b'{"ratings": [{"item": 1, "rating": NaN}]}', 422, "ratings.0.rating"),
        (b'{"ratings": [{"item": 1}]}', 422, "ratings.0.rating"),
        (b'{"ratings": [{"item": 1, "rating": 9}]}', 422, "outside the scale [0.5, 5]"),
        (b'{"ratings": [{"item": 1, "rating": -1}]}', 422, "outside the scale"),
        (b'{"ratings": [], "k": 0}', 422, "k"),
        (b'{"ratings": [], "k": "ten"}', 422, "k"),
        (b'{"ratings": [], "k": 100000}', 422, "k: at most"),
        (b'{"ratings": [], "extra": 1}', 422, "extra"),
        (b'{"k": 3}', 422, "either 'ratings'"),
        (b'{"ratings": [], "interactions": [1]}', 422, "either 'ratings'"),
        (b'{"interactions": [1, 2]}', 422, "explicit ratings"),
        (json.dumps({"ratings": ratings(*[(i, 3) for i in range(1, 400)])}).encode(), 422, "at most 32 items"),
        (json.dumps({"ratings": ratings(*[(i, 3) for i in range(1, 3000)])}).encode(), 413, "limit"),
        # past JSON's grammar: FastAPI said only "There was an error parsing the body" (a 400)
        (b'{"k": "\xff"}', 422, "not UTF-8 text"),
        (b'{"ratings": [{"item": 1' + b"0" * 5000 + b', "rating": 4}]}', 422, "digits"),
        (b"[" * 5000 + b"]" * 5000, 422, "nested too deeply"),
        # a value of neither of an id's types, and the value named
        (
            b'{"ratings": [{"item": null, "rating": 4}]}',
            422,
            "ratings.0.item: should be an integer or a string, got null",
        ),
        (b'{"ratings": [], "k": -5}', 422, "greater than or equal to 1, got -5"),
    ],
)
def test_bad_requests_are_a_4xx_naming_the_problem(server, body, status, words):
    got, answer = server.request("POST", "/recommend", body, JSON)
    assert got == status, answer
    assert words in answer["error"], answer


def test_a_body_sent_without_the_json_content_type_is_told_so(server):
    """``curl -d`` sends a form's content-type: the body was then read as no JSON at all, and the answer blamed a
    missing dictionary."""
    body = json.dumps({"ratings": ratings((TOY_STORY, 5)), "k": 3}).encode()
    for headers in ({}, {"Content-Type": "application/x-www-form-urlencoded"}, {"Content-Type": "text/plain"}):
        status, answer = server.request("POST", "/recommend", body, headers)
        assert status == 415 and "content-type: application/json" in answer["error"], (headers, answer)
    assert server.request("POST", "/recommend", body, JSON)[0] == 200
    assert server.request("POST", "/recommend", body, {"Content-Type": "application/vnd.api+json"})[0] == 200


def test_an_item_id_sent_as_an_integral_number_is_that_integer(server):
    """JSON from JavaScript or a float column writes 1.0 for 1: the string "1.0" matched item 1 while the number
    was refused; 1.5 is no id."""
    as_int = server.post("/recommend", {"ratings": [{"item": TOY_STORY, "rating": 5}], "k": 5})
    as_float = server.post("/recommend", {"ratings": [{"item": float(TOY_STORY), "rating": 5}], "k": 5})
    assert as_int[0] == as_float[0] == 200
    assert as_float[1]["recommendations"] == as_int[1]["recommendations"] and as_float[1]["input"]["used"] == 1


def test_bad_queries_and_paths_are_4xx_too(server):
    assert server.get("/items?limit=1000")[0] == 422
    assert server.get("/items?limit=x")[0] == 422
    status, answer = server.get("/nowhere")
    assert status == 404 and "error" in answer
    assert server.request("GET", "/recommend")[0] == 405
    status, answer = server.request("POST", "/predict", b'{"ratings": [], "candidates": []}', JSON)
    assert status == 422 and "candidates" in answer["error"]
    # /predict scores the candidates given: a `k` there was taken and ignored
    status, answer = server.request("POST", "/predict", b'{"ratings": [], "candidates": [1], "k": 5}', JSON)
    assert status == 422 and answer["error"].startswith("k:"), answer
    # no body bytes: the server answers a header it cannot parse before reading a body, and bytes left unread when it
    # closes make the kernel reset the connection, which can reach the client before the 400 is read
    status, answer = server.request(
        "POST", "/recommend", None, {"Content-Type": "application/json", "Content-Length": "many"}
    )
    assert status == 400


def test_a_chunked_body_over_the_limit_is_refused_while_it_streams(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    chunk = b'{"ratings": [' + b'{"item": 1, "rating": 3},' * 400

    def body():
        for _ in range(4):
            yield chunk

    try:
        connection.request("POST", "/recommend", body=body(), headers=JSON, encode_chunked=True)
        response = connection.getresponse()
        answer = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == 413 and "limit" in answer["error"]


def test_after_hostile_input_the_service_answers_as_before(server):
    sent = {"ratings": ratings((TOY_STORY, 5)), "k": 5}
    first = server.post("/recommend", sent)
    for body in (b"\xff\xfe", b"{" * 5000, b'{"ratings": [' + b"[" * 2000 + b"]"):
        got, _ = server.request("POST", "/recommend", body, JSON)
        assert 400 <= got < 500
    later = server.post("/recommend", sent)
    assert later[0] == first[0] == 200 and later[1]["recommendations"] == first[1]["recommendations"]
    health = server.get("/health")[1]
    assert health["status"] == "ok" and health["rejected"] > 0


def test_it_listens_on_loopback_only_unless_told(server):
    port = f"{server.port:04X}"
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        listening += [line.split()[1] for line in lines if line.split()[1].endswith(":" + port)]
    if not listening:
        pytest.skip("/proc/net/tcp is not readable here")
    assert listening and all(address.startswith("0100007F:") for address in listening), listening


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_service_after_the_request_in_flight(run, signum):
    """What the guarantees say: the request in flight is answered, then the service exits 128 + the signal (the test
    accepted 0 too, and never sent SIGINT)."""
    server = Server(run, "--batch-sizes", "1", "--support-sizes", "8", "--batch-wait-ms", "1500")
    answers = []
    client = threading.Thread(
        target=lambda: answers.append(server.post("/recommend", {"ratings": ratings((TOY_STORY, 4))})[0])
    )
    client.start()
    time.sleep(0.5)  # the request waits 1.5 s for company before its call
    started = time.monotonic()
    server.process.send_signal(signum)
    client.join(30)
    server.process.wait(30)  # its own exit, not stop()'s SIGTERM
    code = server.stop()
    assert answers == [200], server.log.read_text()
    assert code == 128 + signum and time.monotonic() - started < 20, (code, server.log.read_text())
    assert "Traceback" not in server.log.read_text()
    name = signal.Signals(signum).name  # a service writes no file: its last line says what it did finish
    assert f"jaxrec: interrupted by {name}; the service answered its requests in flight" in server.log.read_text()


def test_the_port_is_held_from_before_the_model_loads(run):
    """The port was only probed before the start-up (seconds of loading and compiling) and bound after it: another
    process could take it meanwhile, and the service then said it was serving and failed with uvicorn's error."""
    port = free_port()
    log = run.parent / f"held-{port}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "jaxrec", "serve", "--checkpoint", str(run), "--port", str(port), *BUCKET_FLAGS],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        deadline, held_before_serving = time.monotonic() + 120, None
        while held_before_serving is None and time.monotonic() < deadline and process.poll() is None:
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    held_before_serving = "serving on" not in log.read_text()
            time.sleep(0.02)
        assert held_before_serving, log.read_text()  # bound while the model loaded, before the line was printed
    finally:
        process.terminate()
        process.wait(30)


def test_a_body_that_stops_arriving_is_a_408_and_frees_its_connection(run):
    """A client that sends its headers and stalls mid-body held its connection for ever (a thousand of them starve
    the service); the next part of a body must arrive within --body-timeout-s."""
    server = Server(run, *BUCKET_FLAGS, "--body-timeout-s", "1")
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as stalled:
            head = (
                b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            )
            stalled.sendall(head + b'{"ratings": [')
            started = time.monotonic()
            answer = stalled.recv(65536).decode("utf-8", "replace")
            waited = time.monotonic() - started
            while "stopped" not in answer and (more := stalled.recv(65536)):  # the body may follow the head
                answer += more.decode("utf-8", "replace")
        assert answer.startswith("HTTP/1.1 408") and "stopped arriving for 1 s" in answer, answer
        assert 0.5 < waited < 15
        assert server.post("/recommend", {"ratings": ratings((TOY_STORY, 5))})[0] == 200  # and it serves on
    finally:
        server.stop()


def test_a_port_in_use_is_one_clear_error(run, server):
    done = subprocess.run(
        [sys.executable, "-m", "jaxrec", "serve", "--checkpoint", str(run), "--port", str(server.port)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "cannot listen there" in done.stderr and "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def implicit_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_implicit")
    data = write_plays(root / "plays.tsv")
    out = root / "run"
    # trained with its hybrid (item-kNN's weight chosen on the validation users, without evaluating on test): the
    # service ranks by it, as `jaxrec recommend` and the run's evaluation do
    flags = [
        "--columns",
        "user,item,weight,timestamp",
        *TOPN_FLAGS,
        "--epochs",
        "1",
        "--no-eval",
        "--hybrid",
        "itemknn",
    ]
    assert cli.main(["train", "--data", str(data), *flags, "--out", str(out)]) == 0
    server = Server(out, *BUCKET_FLAGS)
    yield server, out
    server.stop()


def test_an_implicit_model_takes_interactions_and_equals_the_library(implicit_server):
    server, out = implicit_server
    health = server.get("/health")[1]
    assert health["feedback"] == "implicit" and health["items"] == 60 and not health["titles"]
    record = json.loads((out / "hybrid.json").read_text())
    assert health["ranking"] == "maml+itemknn" and health["hybrid_weight"] == record["weight"] > 0
    liked = ["song-00", "song-02", "song-04", "song-06"]
    status, answer = server.post("/recommend", {"interactions": [*liked, "song-99"], "k": 10})
    assert status == 200, answer
    assert answer["input"]["used"] == 4 and answer["input"]["unknown_items"] == ["song-99"]
    got = [r["item"] for r in answer["recommendations"]]
    assert not set(liked) & set(got)
    trained = load_trained(out)
    catalogue = Catalogue(trained)
    codes = np.array([catalogue.code(s) for s in liked])
    assert trained.hybrid is not None
    best, scores = TopNRecommender(trained, trained.params).top_k(codes, np.ones(4, np.float32), 10)
    assert got == [catalogue.ids[c] for c in best]
    np.testing.assert_allclose([r["score"] for r in answer["recommendations"]], scores, rtol=1e-5, atol=1e-5)
    # the hybrid's scores are z-scores summed: not the adapted model's own
    alone = TopNRecommender(trained, trained.params, hybrid=None).top_k(codes, np.ones(4, np.float32), 10)[1]
    assert not np.allclose(scores, alone)
    # a text id with spaces around it is the item, as `jaxrec recommend` reads it from a file (it was unknown)
    padded = server.post("/recommend", {"interactions": [f" {s} " for s in liked], "k": 10})[1]
    assert padded["input"]["used"] == 4 and [r["item"] for r in padded["recommendations"]] == got
    # /predict scores named items on the same scale; the user's own item has no score
    status, predicted = server.post("/predict", {"interactions": liked, "candidates": [got[0], liked[0]]})
    assert status == 200, predicted
    assert predicted["scores"][0]["score"] == pytest.approx(answer["recommendations"][0]["score"], abs=1e-5)
    assert predicted["scores"][1]["score"] is None
    # ratings are interactions too (no threshold recorded: every rating counts); the model was trained on play
    # counts, so a value is the interaction's weight, as `jaxrec recommend` reads a file's second column
    rated = server.post("/recommend", {"ratings": [{"item": s, "rating": 3} for s in liked], "k": 10})[1]
    weighted = server.post("/recommend", {"interactions": liked, "weights": [3, 3, 3, 3], "k": 10})[1]
    assert rated["recommendations"] == weighted["recommendations"]


def test_a_weighted_models_request_weights_are_read_as_the_training_logs(implicit_server):
    """The run was trained on play counts, each a confidence in the fold-in; the service read every interaction as
    weight 1, so it ranked another list than the evaluation of the same user. Weights are summed over duplicates,
    as the training log's duplicates were."""
    server, out = implicit_server
    assert server.get("/health")[1]["weighted"] is True
    liked = ["song-00", "song-02", "song-04", "song-06"]
    status, answer = server.post(
        "/recommend", {"interactions": [*liked, "song-00"], "weights": [20, 1, 2, 1, 20], "k": 10}
    )
    assert status == 200, answer
    assert answer["input"]["used"] == 4 and answer["input"]["duplicates"] == 1
    trained = load_trained(out)
    catalogue = Catalogue(trained)
    codes = np.array([catalogue.code(s) for s in liked])  # song-00 where it first came, its weights summed
    recommender = TopNRecommender(trained, trained.params)
    best, scores = recommender.top_k(codes, np.array([40, 1, 2, 1], np.float32), 10)
    assert [r["item"] for r in answer["recommendations"]] == [catalogue.ids[c] for c in best]
    np.testing.assert_allclose([r["score"] for r in answer["recommendations"]], scores, rtol=1e-5, atol=1e-5)
    once = server.post("/recommend", {"interactions": liked, "k": 10})[1]
    assert [r["score"] for r in once["recommendations"]] != [r["score"] for r in answer["recommendations"]]
    # a rating without its value, or a weight in a rating, names the form this model is sent (it named 'rating')
    for sent in ({"item": "song-00"}, {"item": "song-00", "weight": 3}):
        status, refused = server.post("/recommend", {"ratings": [sent], "k": 3})
        assert status == 422 and refused["error"].startswith("ratings.0."), refused
        assert "send 'interactions' ([item, ...]) and 'weights' ([number, ...], one per item)" in refused["error"]
    # ... and a rating of the wrong type is that error alone: the ratings are this model's too (each a weight)
    status, refused = server.post("/recommend", {"ratings": [{"item": "song-00", "rating": "5"}], "k": 3})
    assert status == 422 and refused["error"].startswith("ratings.0.rating") and "interactions" not in refused["error"]
    # the hybrid's partner folds the plays in too, as the evaluation's baselines do (it read each as 1)
    played, mask = np.array([[40, 1, 2, 1]], np.float32), np.ones((1, 4), bool)
    partner = trained.hybrid.partner_scores(codes[None], mask, played)
    hybrid = trained.hybrid
    folded = fold_in_weights(mask, played, hybrid.recency, hybrid.span)  # the plays, times the run's recency if any
    want = hybrid.fitted.scores(rb.support_matrix(codes[None], hybrid.n_items, folded))
    np.testing.assert_allclose(partner, np.asarray(want, np.float32), rtol=1e-6)
    assert not np.allclose(partner, trained.hybrid.partner_scores(codes[None], mask))
    for body, message in [
        ({"interactions": liked, "weights": [1, 2]}, "'weights' has 2 values for 4 interactions"),
        ({"ratings": [{"item": "song-00", "rating": 2}], "weights": [1]}, "'weights' go with 'interactions'"),
        ({"interactions": liked, "weights": [1, 0, 1, 1]}, "weights.1"),
        ({"ratings": [{"item": "song-00", "rating": -1}]}, "is not a positive weight"),
    ]:
        status, answer = server.post("/recommend", body)
        assert status == 422 and message in answer["error"], (body, answer)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(
    not (CHROMIUM and DRIVER and webdriver),
    reason="no Selenium, Chromium or ChromeDriver (Debian: apt-get install chromium chromium-driver; .ci/run does)",
)


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER and webdriver):
        pytest.skip("no Selenium, Chromium or ChromeDriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1150,560"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    yield driver
    driver.quit()


def recommendations(browser) -> list[tuple[str, float]]:
    """``(item id, shown score)`` of each recommendation, best first."""
    return [
        (li.get_attribute("data-item"), float(li.find_element(By.CSS_SELECTOR, ".score").text))
        for li in browser.find_elements(By.CSS_SELECTOR, "#recs li")
    ]


def rate(browser, wait, query: str, title: str, stars: str) -> None:
    """Search for ``query``, click ``stars`` beside ``title`` and wait for the top-10 to be recomputed."""
    updates = int(browser.find_element(By.TAG_NAME, "body").get_attribute("data-updates"))
    box = browser.find_element(By.ID, "search")
    box.clear()
    box.send_keys(query)
    # the list shows the answer to the whole query (the page renders only its latest search) and holds the title
    wait.until(lambda b: b.find_element(By.ID, "results").get_attribute("data-query") == query)
    row = next(li for li in browser.find_elements(By.CSS_SELECTOR, "#results li") if li.text.startswith(title))
    row.find_element(By.CSS_SELECTOR, f'button[data-rating="{stars}"]').click()
    wait.until(lambda b: int(b.find_element(By.TAG_NAME, "body").get_attribute("data-updates")) > updates)


@needs_browser
def test_the_demo_page_in_a_real_browser_updates_the_top_ten_after_each_rating(server, browser):
    wait = WebDriverWait(browser, 30)
    browser.get(server.url + "/")
    wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    assert "items" in browser.find_element(By.ID, "model").text
    stranger = recommendations(browser)
    assert len(stranger) == 10

    rate(browser, wait, "toy story", "Toy Story (1995)", "5")
    rated = [li.get_attribute("data-item") for li in browser.find_elements(By.CSS_SELECTOR, "#rated li")]
    assert rated == ["1"]
    after_one = recommendations(browser)
    assert len(after_one) == 10 and "1" not in {item for item, _ in after_one}
    assert after_one != stranger  # the model adapted to the rating
    assert "adapted to 1 rating(s)" in browser.find_element(By.ID, "status").text

    rate(browser, wait, "matrix", "Matrix, The (1999)", "1")
    after_two = recommendations(browser)
    assert len(after_two) == 10 and after_two != after_one
    assert not {"1", "2571"} & {item for item, _ in after_two}
    scores = [score for _, score in after_two]
    assert scores == sorted(scores, reverse=True)  # best first, with the adapted model's scores

    shot = os.environ.get("JAXREC_SCREENSHOT")
    if shot:
        Path(shot).parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(shot)


@needs_browser
def test_the_demo_page_of_an_implicit_model_sends_interactions(implicit_server, browser):
    server, _ = implicit_server
    wait = WebDriverWait(browser, 30)
    browser.get(server.url + "/")
    wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    assert "implicit" in browser.find_element(By.ID, "model").text
    before = server.get("/health")[1]
    rate(browser, wait, "song-04", "item song-04", "like")
    rate(browser, wait, "song-06", "item song-06", "like")
    after = recommendations(browser)
    assert len(after) == 10 and not {"song-04", "song-06"} & {item for item, _ in after}
    assert "adapted to 2 interaction(s)" in browser.find_element(By.ID, "status").text
    assert server.get("/health")[1]["requests"] - before["requests"] == 2


def test_one_failing_request_does_not_fail_the_requests_batched_with_it():
    """A user with every item of the catalogue failed the whole micro-batch: six good requests got 500s with it."""
    import asyncio

    from jaxrec.serve.batching import MicroBatcher

    calls = []

    def run(items):
        calls.append(list(items))
        if "bad" in items:
            raise ValueError("high <= 0")
        return [item.upper() for item in items]

    async def main():
        batcher = MicroBatcher(run, max_batch=8, max_wait=0.05)
        await batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(x) for x in ("a", "b", "bad", "c")), return_exceptions=True)
        finally:
            await batcher.stop()

    answers = asyncio.run(main())
    assert answers[:2] == ["A", "B"] and answers[3] == "C"
    assert isinstance(answers[2], ValueError) and "high <= 0" in str(answers[2])
    assert calls[0] == ["a", "b", "bad", "c"] and sorted(map(tuple, calls[1:])) == [("a",), ("b",), ("bad",), ("c",)]


def _implicit_model(weighted, positive_threshold=None, ratings_as_interactions=False):
    """What a catalogue reads of a top-N run of the items a, b and c."""
    data = SimpleNamespace(feedback="implicit", positive_threshold=positive_threshold)
    return SimpleNamespace(
        item_ids=np.array(["a", "b", "c"], dtype=object),
        titles=None,
        config=SimpleNamespace(data=data),
        featurizer=SimpleNamespace(spec=SimpleNamespace(rating_range=None), user_features_read=[]),
        weighted=weighted,
        ratings_as_interactions=ratings_as_interactions,
    )


def _catalogue(weighted, positive_threshold=None, ratings_as_interactions=False):
    return Catalogue(_implicit_model(weighted, positive_threshold, ratings_as_interactions))


def test_a_file_of_users_is_read_as_the_service_reads_requests(tmp_path, monkeypatch):
    """A thresholded model reads ratings, so a weight column is refused (plays were compared with the rating
    threshold and dropped); a weighted model refuses a weight that is not positive, naming the line."""
    from jaxrec.serve.batch import read_users, recommend_users

    table = tmp_path / "users.csv"
    table.write_text("user,item,plays\nu,a,7\nu,b,1\n")
    with pytest.raises(ValueError, match=r"trained on ratings \(positive threshold 4\): give a rating column"):
        recommend_users(_implicit_model(False, positive_threshold=4.0), read_users(table), 2)
    table.write_text("user,item,plays\nu,a,7\nu,b,0\n")
    with pytest.raises(ValueError, match=r"line 3 \(user 'u'\): weight 0 is not a positive weight"):
        recommend_users(_implicit_model(True), read_users(table), 2)
    # an unweighted model counts each item once: a weight column it does not read is reported, not passed over
    table.write_text("user,item,plays,note\nu,zz,7,x\n")
    from jaxrec.serve import batch

    ranked = SimpleNamespace(codes=np.array([2, 0]), scores=np.array([0.5, 0.25], np.float32), finite=True)
    monkeypatch.setattr(batch, "_rank", lambda trained, inputs, *rest: [ranked for _ in inputs])  # no model here
    lists, report = recommend_users(_implicit_model(False), read_users(table), 2)
    # no item the model knows: its list before adaptation, as the service answers such a user (it had no list)
    assert len(lists) == 2 and report["without_items"] == 1 and report["unknown"] == 1 and report["unadapted"] == ["u"]
    assert report["values_ignored"] == "weight" and report["ignored_columns"] == ["note"]


def test_a_file_of_users_is_read_as_the_log_readers_read_a_log(tmp_path):
    """The log readers' rules, not a second reader's: blank lines before the header, a quote inside a tab-separated
    id, a separator of two characters; Parquet known by its bytes, float ids of whole numbers, ids beyond 2^53."""
    from jaxrec.data import DataError
    from jaxrec.serve.batch import read_users

    table = tmp_path / "users.csv"
    table.write_text("\n\nuser,item,rating\nu,a,4\n\nu,b,x\n")
    with pytest.raises(DataError, match="column 'rating' line 6 is not a finite number"):
        read_users(table)
    table.write_text('user\titem\nu\ta"b\n')
    assert read_users(table)["item"].tolist() == ['a"b']
    with pytest.raises(DataError, match="separator '\\|\\|': give one character"):
        read_users(table, sep="||")
    pytest.importorskip("pyarrow")
    parquet = tmp_path / "users.bin"  # no .parquet suffix
    pd.DataFrame({"user": [1.0, 2.0], "item": [5, 6], "extra": [0, 0]}).to_parquet(parquet)
    users = read_users(parquet)
    assert users["user"].tolist() == ["1", "2"] and users.attrs["ignored_columns"] == ["extra"]
    with pytest.raises(DataError, match="a Parquet file has no separator"):
        read_users(parquet, sep=",")
    pd.DataFrame({"user": [1.0, 1e20], "item": [5, 6]}).to_parquet(parquet)
    with pytest.raises(DataError, match=r"row 1 holds 1e\+20, not a whole user id \(below 2\^53\)"):
        read_users(parquet)


def test_weights_go_to_a_weighted_model_only():
    """An unweighted model (or one whose threshold reads values as ratings) counts each item once: weights sent to
    it are refused rather than ignored, and its ratings stay interactions of weight 1."""
    with pytest.raises(RequestError, match="trained on interactions without weights"):
        _catalogue(False).support(None, ["a", "b"], 8, [2.0, 1.0])
    with pytest.raises(RequestError, match="trained on interactions without weights"):
        _catalogue(True, positive_threshold=4.0).support(None, ["a", "b"], 8, [2.0, 1.0])
    unweighted = _catalogue(False).support([("a", 3.0), ("b", 5.0), ("a", 2.0)], None, 8)
    assert unweighted.values.tolist() == [1.0, 1.0] and unweighted.duplicates == 1
    weighted = _catalogue(True).support([("a", 3.0), ("b", 5.0), ("a", 2.0)], None, 8)
    assert weighted.codes.tolist() == [0, 1] and weighted.values.tolist() == [5.0, 5.0]  # at its first, summed
    # interactions sent without weights weigh 1 each, summed too, as `recommend` reads a list of ids
    repeated = _catalogue(True).support(None, ["c", "a", "c"], 8)
    assert repeated.codes.tolist() == [2, 0] and repeated.values.tolist() == [2.0, 1.0]
    assert _catalogue(False).support(None, ["c", "a", "c"], 8).values.tolist() == [1.0, 1.0]


def test_a_gru_run_serves_each_user_of_a_batch_as_the_recommender_scores_them(tmp_path):
    """A model of rating histories reads, for every candidate, the user's own last ``L`` ratings: users of different
    lengths answered in one compiled call each get their own (a GRU run could not serve before: no history rows)."""
    from serve_support import MOVIELENS_FLAGS

    from jaxrec.serve.engine import ServingModel, UserInput

    out = tmp_path / "gru"
    flags = ["--model", "gru", "--model-kwargs", '{"embed": 4, "hidden": [8]}', "--steps", "2"]  # serving, not skill
    assert cli.main(["train", *MOVIELENS_FLAGS, *flags, "--out", str(out)]) == 0
    trained = load_trained(out)
    recommender = Recommender(trained, trained.params)
    rng = np.random.default_rng(0)
    n = trained.featurizer.n_items
    users = [(rng.choice(n, k, replace=False), rng.choice([1.0, 3.0, 5.0], k).astype(np.float32)) for k in (2, 9, 25)]
    probe = rng.choice(n, 50, replace=False)
    served = ServingModel(trained, batch_sizes=(8,), support_sizes=(32,), max_k=10, max_probe=50)
    answers = served.rank([UserInput(c, v, k=10, probe=probe) for c, v in users])
    for (codes, values), answer in zip(users, answers, strict=True):
        expected = recommender.clip(recommender.scores(codes, values)[probe])
        np.testing.assert_allclose(answer.probe_scores, expected, rtol=1e-5, atol=1e-5)


def _integer_catalogue(ids=(1, 2, 2571)):
    trained = SimpleNamespace(
        item_ids=np.array(ids),
        titles=None,
        config=SimpleNamespace(data=SimpleNamespace(feedback="implicit", positive_threshold=None)),
        featurizer=SimpleNamespace(spec=SimpleNamespace(rating_range=None), user_features_read=[]),
        weighted=True,
    )
    return Catalogue(trained)


def test_a_thresholded_model_takes_interactions_as_positives_and_leaves_low_ratings_out_of_the_list():
    """A top-N run of rated data (``--positive-threshold``) reads ``interactions`` as positives (they used to be
    valued 1 and dropped as below the threshold: the answer was the unpersonalised list) and ``ratings`` against
    the threshold; the items rated below it are not adapted to, and are seen: left out of the list."""
    thresholded = _catalogue(False, positive_threshold=4.0)
    sent = thresholded.support(None, ["a", "b"], 8)
    assert sent.codes.tolist() == [0, 1] and sent.below_threshold == 0 and sent.seen.tolist() == []
    rated = thresholded.support([("a", 5.0), ("b", 2.0), ("c", 4.0)], None, 8)
    assert rated.codes.tolist() == [0, 2] and rated.values.tolist() == [1.0, 1.0]
    assert rated.below_threshold == 1 and rated.seen.tolist() == [1]
    assert thresholded.user_input(rated, 5).seen.tolist() == [1]


def test_ratings_an_unweighted_click_model_cannot_read_are_said_to_be_ignored():
    """A model of unweighted clicks without a positive threshold counts each item sent once: ratings sent to it were
    read as plain interactions in silence (``jaxrec recommend --users`` notes the ignored column); the answer says so.
    A weighted model reads them as weights, a thresholded one against its threshold: nothing ignored there."""
    sent = _catalogue(False).support([("a", 5.0), ("b", 1.0)], None, 8)
    assert sent.codes.tolist() == [0, 1] and sent.report()["ratings_ignored"] is True
    assert "ratings_ignored" not in _catalogue(False).support([("a", 1.0)], None, 8).report()
    assert "ratings_ignored" not in _catalogue(False).support(None, ["a", "b"], 8).report()
    assert "ratings_ignored" not in _catalogue(True).support([("a", 5.0)], None, 8).report()
    assert "ratings_ignored" not in _catalogue(False, positive_threshold=4.0).support([("a", 5.0)], None, 8).report()
    # a weighted model reads a rating's value as the weight: the answer says so (a trial found it silent)
    weighted = _catalogue(True).support([("a", 5.0)], None, 8)
    assert weighted.values.tolist() == [5.0] and weighted.report()["ratings_as_weights"] is True
    assert "ratings_as_weights" not in _catalogue(True).support(None, ["a"], 8, [5.0]).report()
    assert "ratings_as_weights" not in _catalogue(False).support([("a", 5.0)], None, 8).report()


def test_a_run_whose_log_ratings_were_interactions_reads_a_new_users_ratings_alike(tmp_path):
    """A log of rated rows read as interactions without a threshold (Goodreads' 0-5, each row one interaction) with
    repeated pairs is a weighted run (a pair's weight its number of rows): a new user's rating was then read as a
    weight (a 5 five times a 1, a 0 refused), in the service, recommend --users and recommend --ratings."""
    from jaxrec.experiment.recommend import read_user_ratings
    from jaxrec.experiment.run import RunError
    from jaxrec.serve.batch import _values, read_users

    catalogue = _catalogue(True, ratings_as_interactions=True)
    sent = catalogue.support([("a", 5.0), ("b", 0.0), ("a", 1.0)], None, 8)
    assert sent.codes.tolist() == [0, 1] and sent.values.tolist() == [2.0, 1.0]  # repeats add up, as the log's did
    assert sent.report()["ratings_ignored"] is True and "ratings_as_weights" not in sent.report()
    assert catalogue.support(None, ["a", "b"], 8, [3.0, 1.0]).values.tolist() == [3.0, 1.0]  # weights are weights
    table = tmp_path / "users.csv"
    table.write_text("user,item,rating\nu,a,5\nu,b,0\n")
    assert _values(catalogue, read_users(table), "users.csv") is None  # each row an interaction
    table.write_text("user,item,weight\nu,a,5\nu,b,2\n")
    assert _values(catalogue, read_users(table), "users.csv").tolist() == [5.0, 2.0]
    assert _values(_catalogue(True), read_users(table), "users.csv").tolist() == [5.0, 2.0]
    mine = tmp_path / "mine.csv"
    mine.write_text("item,rating\na,5\nb,0\na,1\n")
    ids = np.array(["a", "b", "c"], dtype=object)
    read = read_user_ratings(mine, ids, None, implicit=True, weighted=True, ratings_as_interactions=True)
    assert read.codes.tolist() == [0, 1] and read.values.tolist() == [2.0, 1.0]
    assert any("ratings as interactions" in note for note in read.notes), read.notes
    with pytest.raises(RunError, match="weight 0 is not positive"):  # a run of weights reads them as weights
        read_user_ratings(mine, ids, None, implicit=True, weighted=True)
    weights = tmp_path / "weights.csv"  # ... and a column its header calls a weight is one in either run
    weights.write_text("item,plays\na,5\nb,2\n")
    read = read_user_ratings(weights, ids, None, implicit=True, weighted=True, ratings_as_interactions=True)
    assert read.values.tolist() == [5.0, 2.0]
    mine.write_text("item,rating\na,5 stars\n")  # a value that is no number is still refused
    with pytest.raises(RunError, match=r"line 2: rating '5 stars' is not a number"):
        read_user_ratings(mine, ids, None, implicit=True, weighted=True, ratings_as_interactions=True)
    # an unknown item's rating is not said to be ignored (it is not used at all); an unweighted run counts each once
    assert "ratings_ignored" not in catalogue.support([("a", 1.0), ("zzz", 5.0)], None, 8).report()
    assert _catalogue(False, ratings_as_interactions=True).support(
        [("a", 5.0), ("a", 1.0)], None, 8
    ).values.tolist() == [1.0]


def test_ids_in_other_digits_and_values_beyond_float32_are_refused_not_a_500():
    """``'²'.isdigit()`` is True but ``int('²')`` raises (a 500 before); other scripts' digits are not the ASCII id
    they spell; a weight of 1e39 is inf in float32 (every score was null)."""
    catalogue = _integer_catalogue()
    assert catalogue.code("2571") == 2 and catalogue.code(" +2571 ") == 2
    for odd in ("²", "٢٥٧١", "-+1", "1²"):
        assert catalogue.code(odd) is None
    with pytest.raises(RequestError, match=r"weights\[0\] \(item 1\): 1e\+39 is beyond float32"):
        catalogue.support(None, [1, 2], 8, [1e39, 1.0])
    with pytest.raises(RequestError, match="sum beyond float32"):
        catalogue.support(None, [1, 1], 8, [3e38, 3e38])


def test_the_service_matches_integer_ids_as_the_command_line_does():
    """One reading of an integer id for the service, the command's files and side tables: ``7.0`` was unknown to
    the service alone, and a 19-digit id (a snowflake id, inside int64) unknown to the command alone."""
    from jaxrec.experiment.recommend import item_codes_of

    ids = (5, 1234567890123456789, 2**63 - 1)
    catalogue = _integer_catalogue(ids)
    asked = [5, "5", " 5 ", "005", 5.0, "5.0", "1234567890123456789", "9223372036854775807", "9223372036854775808"]
    asked += [True, "5.5", "x", 1e300, "0000000000000000000005"]
    codes = [0, 0, 0, 0, 0, 0, 1, 2, -1, -1, -1, -1, -1, 0]
    assert [catalogue.code(a) if catalogue.code(a) is not None else -1 for a in asked] == codes
    assert item_codes_of([str(a) for a in asked], np.array(ids)).tolist() == codes


def test_seen_items_are_left_out_of_the_served_list_as_the_library_leaves_them_out(implicit_server):
    """Items a user has but did not adapt to (rated below a threshold) are excluded inside the compiled call: the
    served list equals ``TopNRecommender.top_k(..., exclude=seen)`` and the adaptation is the support's alone."""
    from jaxrec.serve.engine import ServingModel, UserInput

    _, out = implicit_server
    trained = load_trained(out)
    recommender = TopNRecommender(trained, trained.params)
    codes, weights = np.array([0, 2, 4]), np.ones(3, np.float32)
    plain, _ = recommender.top_k(codes, weights, 8)
    seen = plain[:3]
    best, scores = recommender.top_k(codes, weights, 5, exclude=seen)
    assert best.tolist() == plain[3:8].tolist()
    served = ServingModel(trained, batch_sizes=(4,), support_sizes=(8, 16), max_k=10)
    answer = served.rank([UserInput(codes, weights, k=5, seen=seen)])[0]
    assert answer.finite and answer.codes.tolist() == best.tolist()
    np.testing.assert_allclose(answer.scores, scores, rtol=1e-5, atol=1e-5)
    # more seen items than a support bucket holds: the bucket is chosen for them too
    many, _ = recommender.top_k(codes, weights, 20)
    shown, _ = recommender.top_k(codes, weights, 5, exclude=many[:12])
    answer = served.rank([UserInput(codes, weights, k=5, seen=many[:12])])[0]
    assert answer.codes.tolist() == shown.tolist() == many[12:17].tolist()


def test_excluded_items_are_never_listed_and_the_next_best_take_their_places(implicit_server):
    """Items never to recommend (the engine's catalogue-wide ``exclude``: ``serve --exclude``) and a request's own
    ``exclude`` are left out inside the compiled call: each list is the library's ``top_k(..., exclude=...)``, still
    ``k`` long; what cannot be excluded is a 4xx naming the field."""
    from jaxrec.serve.engine import ServingModel, UserInput

    server, out = implicit_server
    trained = load_trained(out)
    recommender = TopNRecommender(trained, trained.params)
    catalogue = Catalogue(trained)
    liked = ["song-00", "song-02", "song-04"]
    codes, weights = np.array([catalogue.code(s) for s in liked]), np.ones(3, np.float32)
    plain, _ = recommender.top_k(codes, weights, 60)
    withdrawn = plain[[0, 2, 5]]
    served = ServingModel(trained, batch_sizes=(4,), support_sizes=(8,), max_k=60, exclude=withdrawn)
    seen = plain[1:2]
    answers = served.rank([UserInput(codes, weights, k=5), UserInput(codes, weights, k=5, seen=seen)])
    for answer, theirs in zip(answers, ([], seen), strict=True):
        best, scores = recommender.top_k(codes, weights, 5, exclude=np.union1d(withdrawn, theirs))
        assert answer.codes.tolist() == best.tolist() and not set(best) & set(withdrawn)
        np.testing.assert_allclose(answer.scores, scores, rtol=1e-5, atol=1e-5)
    # a list is as long as the items left: 60 items, 3 of the user's, 3 withdrawn, 1 seen
    every = served.rank([UserInput(codes, weights, k=60, seen=seen)])[0]
    assert len(every.codes) == 53 and np.all(np.isfinite(every.scores))
    assert not set(every.codes) & {*withdrawn, *seen, *codes}
    assert served.compiled_shapes() == 1
    with pytest.raises(ValueError, match="exclude holds codes outside 0 to 59"):
        ServingModel(trained, batch_sizes=(1,), support_sizes=(8,), exclude=[60])
    # the request's own exclusions, over HTTP: unknown ids and the user's own items counted as such
    sent = [catalogue.ids[c] for c in withdrawn]
    request = {"interactions": liked, "k": 5, "exclude": [*sent, "song-00", "song-99"]}
    status, answer = server.post("/recommend", request)
    assert status == 200, answer
    best, scores = recommender.top_k(codes, weights, 5, exclude=withdrawn)
    assert [r["item"] for r in answer["recommendations"]] == [catalogue.ids[c] for c in best]
    np.testing.assert_allclose([r["score"] for r in answer["recommendations"]], scores, rtol=1e-5, atol=1e-5)
    assert answer["input"]["excluded"] == 3 and answer["input"]["unknown_excluded"] == 1  # song-00 is the user's
    too_many = {"interactions": liked, "exclude": catalogue.ids[:40]}
    status, answer = server.post("/recommend", too_many)
    assert status == 422 and answer["error"].startswith("exclude: at most 32 items"), answer
    status, answer = server.post("/predict", {"interactions": liked, "candidates": ["song-01"], "exclude": sent})
    assert status == 422 and "exclude" in answer["error"], answer
    assert server.get("/health")[1]["excluded_items"] == 0


def test_weights_that_overflow_the_fold_in_are_an_error_not_a_list(implicit_server, tmp_path):
    """A weight finite in float32 can still overflow once weighed by its recency (3e38 times about 2): the library
    raises, the engine flags that user alone and the service answers 422, where they returned the user's own items
    or null scores."""
    from jaxrec.serve.engine import ServingModel, UserInput

    _, out = implicit_server
    weighed = tmp_path / "run"
    shutil.copytree(out, weighed)
    (weighed / RECENCY_FILE).write_text(json.dumps({"maml": 8.0}))  # as a run that chose tau 8 keeps it
    trained = load_trained(weighed)
    codes, weights = np.array([0, 2]), np.array([1.0, 3e38], np.float32)  # the newest weighs most
    recommender = TopNRecommender(trained, trained.params)
    assert recommender.recency == 8.0 and len(recommender.top_k(codes, np.ones(2, np.float32), 5)[0]) == 5
    with pytest.raises(ValueError, match="not finite numbers"):
        recommender.top_k(codes, weights, 5)
    served = ServingModel(trained, batch_sizes=(4,), support_sizes=(8,), max_k=10)
    fine, overflowing = served.rank([UserInput(codes, np.ones(2, np.float32), k=5), UserInput(codes, weights, k=5)])
    assert fine.finite and not overflowing.finite
    server = Server(weighed, *BUCKET_FLAGS)
    try:
        request = {"interactions": ["song-00", "song-02"], "weights": [1, 3e38], "k": 5}
        status, answer = server.post("/recommend", request)
        assert status == 422 and "not finite numbers" in answer["error"], answer
        assert server.post("/recommend", {**request, "weights": [1, 1]})[0] == 200
    finally:
        server.stop()
