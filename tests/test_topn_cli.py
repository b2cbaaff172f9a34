"""``jaxrec train --feedback implicit``: a play-count log with string ids, end to end through the command (metrics,
checkpoint, evaluate, saved predictions), and its clear errors."""

import dataclasses
import gzip
import json

import numpy as np
import pandas as pd
import pytest
from cli_support import TOPN_FLAGS, write_plays, write_ratings
from serve_support import Server

from jaxrec import cli


def capture(monkeypatch):
    lines = []
    monkeypatch.setattr(cli, "_echo", lambda *parts, err=False: lines.append(" ".join(map(str, parts))))
    return lines


#: every method of the shared run: the meta-learner, its re-ranked lists, the baselines and the hybrids with item-kNN
METHODS = {"maml", "rerank", "popular", "itemknn", "ease", "mf", "finetune", "no_adapt"}
METHODS |= {f"{m}+itemknn" for m in ("maml", "popular", "ease", "mf")}


@pytest.fixture(scope="module")
def topn_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("topn")
    data = write_plays(root / "plays.tsv")
    out, predictions = root / "run", root / "predictions"
    patch = pytest.MonkeyPatch()
    lines = capture(patch)
    try:
        code = cli.main(
            [
                "train",
                "--data",
                str(data),
                "--columns",
                "user,item,weight,timestamp",
                *TOPN_FLAGS,
                "--epochs",
                "2",
                "--rerank",
                "melu",
                "--rerank-candidates",
                "50",
                "--hybrid",
                "itemknn",
                "--out",
                str(out),
                "--save-predictions",
                str(predictions),
            ]
        )
    finally:
        patch.undo()
    assert code == 0, lines
    return {"out": out, "data": data, "predictions": predictions, "output": "\n".join(lines)}


def test_train_writes_top_n_metrics_for_the_meta_learner_and_every_baseline(topn_run):
    document = json.loads((topn_run["out"] / "metrics.json").read_text())
    assert document["task"] == "topn"
    methods = document["scenarios"]["new_user"]
    assert set(methods) == METHODS
    for name, summary in methods.items():
        for k in (10, 20, 50):
            for metric in ("recall", "ndcg", "hr", "mrr"):
                assert 0.0 <= summary[f"{metric}@{k}"] <= 1.0, (name, metric, k)
            assert 0.0 < summary[f"coverage@{k}"] <= 1.0
        assert summary["users"] == document["split"]["new_users"]
        if name != "maml":
            lo, hi = summary["paired"]["recall@20"]["ci95"]
            assert lo <= summary["paired"]["recall@20"]["diff"] <= hi
    # two tastes: every method that uses the support set beats the popularity ranking by far
    assert methods["itemknn"]["recall@20"] > 1.5 * methods["popular"]["recall@20"]
    assert methods["ease"]["recall@20"] > 1.5 * methods["popular"]["recall@20"]
    # the log's duplicates were merged and counted, in the file and on the console
    assert document["data_report"]["duplicates_merged"] == 120
    assert "note: the log: 120 duplicate (user, item) row(s) merged away" in topn_run["output"]
    assert "recall@20" in topn_run["output"] and "itemknn" in topn_run["output"]


def test_meta_train_users_too_short_for_a_task_are_counted_on_the_console(tmp_path, monkeypatch):
    """Users whose interactions cannot make a support and a query were left out of meta-training with no word on the
    console (only metrics.json counted them, and a --no-eval run writes none)."""
    from jaxrec.experiment import ExperimentConfig
    from jaxrec.experiment.topn import TopNExperiment

    data = write_plays(tmp_path / "plays.tsv")
    short = [f"short-{u}\tsong-0{u % 2}\t1\t{u}" for u in range(40)]  # one play each
    data.write_text(data.read_text() + "\n".join(short) + "\n")
    lines = capture(monkeypatch)
    flags = ["--data", str(data), "--columns", "user,item,weight,timestamp", *TOPN_FLAGS, "--steps", "1"]
    assert cli.main(["train", *flags, "--no-eval", "--out", str(tmp_path / "run")]) == 0, lines
    config = ExperimentConfig.make(
        data=str(data), columns=("user", "item", "weight", "timestamp"), feedback="implicit", shots=3
    )
    dropped = TopNExperiment(config).train_tasks.stats["users_dropped"]
    assert 0 < dropped <= 40
    note = f"note: train: {dropped} meta-train user(s) left out: too few interactions for a support and a query"
    assert any(line.startswith(note) for line in lines), lines


def test_a_top_n_run_from_the_field_defaults_names_the_recipe(topn_run):
    assert "--method twotower-als is the configuration the results report" in topn_run["output"]
    assert "twotower from the field defaults (sampled softmax, a random start, 2 epochs" in topn_run["output"]


def test_saved_predictions_are_the_split_and_every_methods_top_k(topn_run):
    folder = topn_run["predictions"]
    split = pd.read_csv(folder / "new_user.split.csv.gz")
    topk = pd.read_csv(folder / "new_user.topk.csv.gz")
    assert set(split["role"]) == {"support", "query"}
    assert split["user"].str.startswith("u-").all() and split["item"].str.startswith("song-").all()
    per_user = split[split.role == "support"].groupby("user").size()
    assert (per_user == 3).all()
    assert set(topk["method"]) == METHODS
    # --rerank melu --rerank-candidates 50: each user's re-ranked top 50 is the meta-learner's top 50, reordered
    lists = topk.sort_values("rank").groupby(["method", "user"])["item"].apply(list)
    users = sorted(set(topk.loc[topk.method == "rerank", "user"]))
    assert all(set(lists["rerank"][u]) == set(lists["maml"][u]) for u in users)
    assert sum(lists["rerank"][u] != lists["maml"][u] for u in users) > len(users) / 2
    assert topk.groupby(["user", "method"])["rank"].max().max() == 50
    shown = split[split.role == "support"]
    support = set(zip(shown["user"], shown["item"], strict=True))
    assert not any((u, i) in support for u, i in zip(topk["user"], topk["item"], strict=True))
    # the saved lists reproduce the reported figure: Recall@20 of maml from the files alone
    query = split[split.role == "query"].groupby("user")["item"].apply(set)
    top20 = topk[(topk.method == "maml") & (topk["rank"] <= 20)].groupby("user")["item"].apply(set)
    recall = np.mean([len(top20.get(u, set()) & q) / len(q) for u, q in query.items()])
    document = json.loads((topn_run["out"] / "metrics.json").read_text())
    assert recall == pytest.approx(document["scenarios"]["new_user"]["maml"]["recall@20"], abs=1e-6)
    with gzip.open(folder / "new_user.topk.csv.gz", "rt") as f:
        assert f.readline().strip() == "user,method,rank,item"


def test_evaluate_reproduces_the_metrics_of_the_run(topn_run, tmp_path, monkeypatch):
    """The same figures from the folder; its re-ranker (``--rerank melu``) is the one kept there, not trained again."""
    from jaxrec.experiment.topn import TopNExperiment

    def no_training(self, *args, **kwargs):
        raise AssertionError("evaluate meta-trained a model")

    monkeypatch.setattr(TopNExperiment, "train", no_training)
    capture(monkeypatch)
    output = tmp_path / "again.json"
    argv = ["evaluate", "--checkpoint", str(topn_run["out"]), "--data", str(topn_run["data"]), "--output", str(output)]
    assert cli.main(argv) == 0
    again = json.loads(output.read_text())["scenarios"]["new_user"]
    first = json.loads((topn_run["out"] / "metrics.json").read_text())["scenarios"]["new_user"]
    for name in first:
        assert again[name]["recall@20"] == pytest.approx(first[name]["recall@20"], abs=1e-9), name


def test_evaluate_refuses_the_log_read_another_way(topn_run, tmp_path, capsys):
    """The same users and items, but the plays and times left out: other splits, other figures, in silence."""
    argv = ["evaluate", "--checkpoint", str(topn_run["out"]), "--data", str(topn_run["data"]),
            "--columns", "user,item,_,_", "--output", str(tmp_path / "other.json")]  # fmt: skip
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "the interactions differ from those the run was trained on" in err and "Traceback" not in err
    assert "rows of item, rating, timestamp, user, weight then" in err and not (tmp_path / "other.json").exists()


def test_evaluate_says_when_the_log_is_the_same_in_another_row_order(topn_run, tmp_path, capsys):
    """The run's log with its rows shuffled was called other interactions: it is the same log, whose split follows
    the row order."""
    lines = topn_run["data"].read_text().splitlines()
    shuffled = tmp_path / "shuffled.tsv"
    body = lines[1:]
    np.random.default_rng(0).shuffle(body)
    shuffled.write_text("\n".join([lines[0], *body]) + "\n")
    argv = ["evaluate", "--checkpoint", str(topn_run["out"]), "--data", str(shuffled), "--columns",
            "user,item,weight,timestamp", "--output", str(tmp_path / "other.json")]  # fmt: skip
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "in another row order" in err and "pass the log in that order" in err and "Traceback" not in err


def test_evaluate_takes_other_topn_baselines_and_names_a_wrong_flag(topn_run, tmp_path, monkeypatch, capsys):
    """A run's baselines re-chosen at evaluation (``--topn-baselines``), without the others' tuning; top-N baselines
    given to --baselines (the rating baselines) are named as that flag's error, not as a broken checkpoint."""
    capture(monkeypatch)
    flags = ("--topn-baselines", "popular", "--hybrid", "none")
    document, first = evaluate_again(topn_run, tmp_path / "popular.json", *flags)
    again = document["scenarios"]["new_user"]
    assert {"maml", "popular"} <= set(again) and not {"itemknn", "ease", "mf", "maml+itemknn"} & set(again), again
    for name in ("maml", "popular"):
        assert again[name]["recall@20"] == pytest.approx(first[name]["recall@20"], abs=1e-9), name
    monkeypatch.undo()
    argv = ["evaluate", "--checkpoint", str(topn_run["out"]), "--data", str(topn_run["data"]), "--baselines", "popular"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "the options given do not fit this run" in err and "incompatible checkpoint" not in err, err
    assert "top-N baselines go to --topn-baselines" in err and "Traceback" not in err


def evaluate_again(topn_run, output, *flags):
    """``jaxrec evaluate`` of the shared run with ``flags``: its new-user summaries, and the training run's."""
    argv = ["evaluate", "--checkpoint", str(topn_run["out"]), "--data", str(topn_run["data"]), *flags,
            "--output", str(output)]  # fmt: skip
    assert cli.main(argv) == 0
    document = json.loads(output.read_text())
    first = json.loads((topn_run["out"] / "metrics.json").read_text())["scenarios"]["new_user"]
    return document, first


def test_evaluate_adds_the_sampled_protocol_labelled_biased(topn_run, tmp_path, monkeypatch):
    lines = capture(monkeypatch)
    saved = tmp_path / "predictions"
    flags = ("--sampled-negatives", "20", "--save-predictions", str(saved))
    document, first = evaluate_again(topn_run, tmp_path / "sampled.json", *flags)
    for name, summary in document["scenarios"]["new_user"].items():
        # the full ranking is unchanged; a positive with fewer than 10 items above it in the catalogue has fewer
        # than 10 of its draws above it: the sampled figure is never below the full one
        assert summary["recall@20"] == pytest.approx(first[name]["recall@20"], abs=1e-9), name
        assert summary["recall@10"] - 1e-6 <= summary["sampled_hr@10"] <= 1.0, name
    assert "sampled_hr@10" in "\n".join(lines) and "biased" in "\n".join(lines)
    # and the file says so beside the figures, for whoever reads metrics.json alone
    protocol = document["sampled_protocol"]
    assert protocol["biased"] is True and protocol["negatives"] == 20 and "Krichene" in protocol["note"]
    assert "sampled_protocol" not in json.loads((topn_run["out"] / "metrics.json").read_text())
    assert_sampled_rows_reproduce(saved, document["scenarios"])


def assert_sampled_rows_reproduce(folder, scenarios):
    """The saved candidates of the sampled protocol are each positive and 20 distinct items the user never
    interacted with in the split, and every method's ``sampled_hr@10`` recomputed from the file alone is the
    reported one."""
    split = pd.read_csv(folder / "new_user.split.csv.gz")
    rows = pd.read_csv(folder / "new_user.sampled.csv.gz")
    assert list(rows.columns[:3]) == ["user", "positive", "item"]
    methods = set(rows.columns[3:])
    assert methods == set(scenarios["new_user"]), methods
    queries = split[split.role == "query"]
    assert set(zip(rows.user, rows.positive, strict=True)) == set(zip(queries.user, queries.item, strict=True))
    lists = rows.groupby(["user", "positive"])["item"]
    assert (lists.size() == 21).all() and (lists.nunique() == 21).all()  # the positive and 20 distinct negatives
    negatives = rows[rows.item != rows.positive]
    own = set(zip(split.user, split.item, strict=True))
    assert not any(pair in own for pair in zip(negatives.user, negatives.item, strict=True))
    for method in methods:
        positive = rows[rows.item == rows.positive].set_index(["user", "positive"])[method]
        scores = negatives.set_index(["user", "positive"])[method]
        above = (scores > positive.reindex(scores.index)).groupby(level=[0, 1]).sum()
        tied = (scores == positive.reindex(scores.index)).groupby(level=[0, 1]).sum()
        hit = np.clip(10 - above, 0, tied + 1) / (tied + 1)
        figure = hit.groupby(level=0).mean().mean()
        assert figure == pytest.approx(scenarios["new_user"][method]["sampled_hr@10"], abs=1e-6), method


def test_evaluate_adds_hybrids_whose_weights_are_recorded(topn_run, tmp_path, monkeypatch):
    lines = capture(monkeypatch)
    document, first = evaluate_again(topn_run, tmp_path / "hybrid.json", "--hybrid", "ease")
    scenario = document["scenarios"]["new_user"]
    assert {"maml+ease", "popular+ease", "itemknn+ease"} <= set(scenario)
    assert not any(name.endswith("+itemknn") for name in scenario)  # the run's own hybrid replaced
    for name in [n for n in first if "+" not in n]:  # the other methods' lists are unchanged
        assert scenario[name]["recall@20"] == pytest.approx(first[name]["recall@20"], abs=1e-9), name
    assert document["tuned"]["maml+ease"]["weight"] > 0
    assert "maml+ease" in "\n".join(lines)


def test_the_run_keeps_its_hybrid_and_recommend_ranks_by_it(topn_run, tmp_path, monkeypatch):
    from jaxrec.evaluation import retrieval_baselines as rb
    from jaxrec.experiment import restore_run
    from jaxrec.experiment.recommend import TopNRecommender
    from jaxrec.experiment.trained import load_trained

    document = json.loads((topn_run["out"] / "metrics.json").read_text())
    record = json.loads((topn_run["out"] / "hybrid.json").read_text())
    assert record["weight"] == document["tuned"]["maml+itemknn"]["weight"]
    assert record["partner_hyper"] == document["tuned"]["itemknn"]["chosen"]
    # the run keeps a re-ranker too (--rerank melu): the hybrid is what it lists by unless re-ranked
    assert "recommend and serve rank by maml+itemknn (weight" in topn_run["output"]
    # the partner fitted again from the folder alone is the evaluated one: the same similarities, to the bit
    trained = load_trained(topn_run["out"])
    experiment, _ = restore_run(topn_run["out"], overrides={"data": str(topn_run["data"])})
    evaluated = rb.fit_itemknn(experiment.train_matrix(), **record["partner_hyper"]).similarity
    served = trained.hybrid.fitted.similarity
    assert (served != evaluated).nnz == 0 and served.nnz > 0
    # the recommender ranks by z(model) + w z(item-kNN), recomputed here in float64 from the two parts
    codes = np.array([list(trained.item_ids).index(s) for s in ("song-00", "song-02", "song-04")])
    model = TopNRecommender(trained, trained.params, hybrid=None).model_scores(codes, np.ones(3, np.float32))
    support = np.zeros((1, len(model)))
    support[0, codes] = 1.0
    partner = (support @ evaluated.toarray().astype(np.float64))[0]
    eligible = np.ones(len(model), bool)
    eligible[codes] = False

    def z(x):
        x = np.asarray(x, np.float64)[eligible]
        return (x - x.mean()) / x.std()

    expected = np.full(len(model), -np.inf)
    expected[eligible] = z(model) + record["weight"] * z(partner)
    hybrid = TopNRecommender(trained, trained.params, reranker=None)
    got = hybrid.scores(codes, np.ones(3, np.float32))
    np.testing.assert_allclose(got[eligible], expected[eligible], rtol=1e-5, atol=1e-5)
    assert np.all(np.isneginf(got[codes]))
    best = hybrid.top_k(codes, np.ones(3, np.float32), 5)[0]
    assert list(best) == list(np.argsort(-expected, kind="stable")[:5])
    lines = capture(monkeypatch)
    items = tmp_path / "mine.txt"
    items.write_text("song-00\nsong-02\nsong-04\n")
    argv = ["recommend", "--checkpoint", str(topn_run["out"]), "--ratings", str(items), "-k", "5", "--no-rerank"]
    assert cli.main(argv) == 0
    assert "ranked by maml+itemknn" in "\n".join(lines)
    assert "these lists are maml+itemknn's: --no-rerank" in "\n".join(lines)
    listed = [line.split("(item ")[1].split(",")[0] for line in lines if "(item " in line]
    assert listed == [trained.item_ids[c] for c in best]


def test_the_hybrids_partner_is_fitted_once_when_first_used(topn_run, monkeypatch):
    """Loading a run fits nothing: its partner is fitted by the first list, once, so that a model grown by
    ``--new-items`` before it serves (a second hybrid record, of the grown catalogue) fits it once, not twice."""
    from jaxrec.evaluation import retrieval_baselines as rb
    from jaxrec.experiment.recommend import TopNRecommender
    from jaxrec.experiment.trained import load_trained

    fits = []
    fit = rb.fit_baseline
    monkeypatch.setattr(rb, "fit_baseline", lambda *a, **k: fits.append(a[0]) or fit(*a, **k))
    trained = load_trained(topn_run["out"])
    assert trained.hybrid is not None and fits == []
    hybrid = TopNRecommender(trained, trained.params, reranker=None)
    first = hybrid.top_k(np.array([0, 2, 4]), np.ones(3, np.float32), 5)
    second = hybrid.top_k(np.array([1, 3]), np.ones(2, np.float32), 5)
    assert fits == ["itemknn"] and len(first[0]) == len(second[0]) == 5
    assert dataclasses.replace(trained.hybrid, weight=2.0).fitted is trained.hybrid.fitted and len(fits) == 1


def test_a_changed_or_missing_hybrid_file_is_one_clear_error(topn_run, tmp_path):
    import shutil

    from jaxrec.experiment.checkpoint import CheckpointError
    from jaxrec.experiment.run import check_fresh_out
    from jaxrec.experiment.trained import load_trained

    copy = tmp_path / "run"
    shutil.copytree(topn_run["out"], copy)
    interactions = copy / "hybrid_interactions.npz"
    interactions.write_bytes(interactions.read_bytes() + b"x")
    with pytest.raises(CheckpointError, match="hybrid_interactions.npz have changed"):
        load_trained(copy)
    interactions.unlink()
    with pytest.raises(CheckpointError, match="hybrid_interactions.npz are missing"):
        load_trained(copy)
    # a new run in the folder (--overwrite) removes the old run's hybrid with its other files
    interactions.write_bytes(b"")
    check_fresh_out(copy, overwrite=True)
    assert not (copy / "hybrid.json").exists() and not interactions.exists()


def test_a_count_column_read_as_ratings_is_one_clear_error(tmp_path, capsys):
    path = tmp_path / "checkins.csv"
    path.write_text("".join(f"u{u},venue{v},{1 + (u * 37 + v * 11) % 323}\n" for u in range(30) for v in range(8)))
    code = cli.main(["train", "--data", str(path), "--columns", "user,item,rating", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code != 0
    assert "looks like a count" in err and "--feedback implicit" in err and "checkins.csv" in err
    assert "Traceback" not in err


def test_a_log_of_users_with_too_few_interactions_is_refused_before_training(tmp_path, capsys):
    path = tmp_path / "short.csv"  # TOPN_FLAGS ask for 3 shots: no user has more than 3 interactions
    path.write_text("user,item\n" + "".join(f"u{u},i{(u * 7 + j) % 40}\n" for u in range(120) for j in range(3)))
    code = cli.main(["train", "--data", str(path), *TOPN_FLAGS, "--epochs", "1", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert "short.csv: none of the" in err and "validation user(s) has more than 3 interactions" in err
    assert not (tmp_path / "r" / "checkpoints").exists()  # refused before any training


def test_a_catalogue_smaller_than_the_cut_offs_is_evaluated_and_the_trivial_cut_offs_are_named(
    tmp_path, monkeypatch, capsys
):
    """20 items, a support of 3: the default cut-offs 20 and 50 reach every item a new user can be recommended
    (top_k past the catalogue failed after training); the run finishes, says so, and chooses by Recall@10."""
    rng = np.random.default_rng(0)
    path = tmp_path / "small.csv"
    rows = [f"u{u},i{i},{t}" for u in range(90) for t, i in enumerate(rng.choice(np.arange(u % 2, 20, 2), 8, False))]
    path.write_text("user,item,time\n" + "\n".join(rows) + "\n")
    lines = capture(monkeypatch)
    out = tmp_path / "r"
    flags = [a for a in TOPN_FLAGS if a != "--no-progress"] + ["--no-progress", "--epochs", "1", "--out", str(out)]
    assert cli.main(["train", "--data", str(path), "--columns", "user,item,timestamp", *flags]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "reach every item" in line]
    assert len(warned) == 1 and "the cut-offs 20, 50" in warned[0] and "recall@10" in warned[0], warned
    document = json.loads((out / "metrics.json").read_text())
    methods = document["scenarios"]["new_user"]
    assert methods["maml"]["recall@20"] == pytest.approx(1.0) and 0.0 < methods["maml"]["recall@10"] < 1.0
    assert document["tuned"]["epoch"]["metric"] == "recall@10"
    assert all(key.endswith("recall@10") for key in document["tuned"]["ease"] if key.startswith("validation_"))
    assert "recall@20" in "\n".join(lines)


def test_the_table_shows_the_cut_offs_a_run_has():
    """A run with other cut-offs (--topn-ks 5,10; --ks 5,10) shows them, not an empty table of the defaults'."""
    topn = {
        "task": "topn",
        "scenarios": {
            "new_user": {
                "maml": {
                    "users": 3,
                    "hr@5": 0.1,
                    "hr@10": 0.2,
                    "recall@5": 0.3,
                    "recall@10": 0.4,
                    "ndcg@5": 0.5,
                    "ndcg@10": 0.6,
                    "mrr@10": 0.7,
                    "coverage@10": 0.8,
                }
            }
        },
    }
    header = cli.format_table(topn).splitlines()[0].split()
    assert header == ["scenario", "method", "users", "hr@10", "recall@10", "ndcg@10", "mrr@10", "coverage@10"]
    rating = {"scenarios": {"new_user": {"maml": {"users": 3, "mae": 0.7, "rmse": 0.9, "ndcg@5": 0.8, "ndcg@10": 0.9}}}}
    assert cli.format_table(rating).splitlines()[0].split() == ["scenario", "method", "users", "mae", "rmse", "ndcg@5"]
    rating["scenarios"]["new_user"]["maml"].update({"auc": 0.7, "hr@1": 0.2, "hr@10": 0.9})  # binary targets
    assert cli.format_table(rating).splitlines()[0].split()[-2:] == ["auc", "hr@10"]
    rating["config"] = {"protocol": {"tasks_by": "item"}}  # a task per item: the count is of items
    assert cli.format_table(rating).splitlines()[0].split()[:3] == ["scenario", "method", "items"]
    rating["scenarios"]["new_user"]["user_mean"] = {"users": 3, "mae": 0.8}
    rating["tasks"] = {"new_user": {"tasks": 40, "users_dropped": 2}}
    notes = cli.task_notes(rating)
    assert (
        notes[0] == "note: new_user: 40 items evaluated; 2 item(s) left out: too few or too many ratings for a task "
        "(--min-ratings, --max-ratings, --query)"
    )
    assert "user_mean is each new item's mean support rating" in notes[1] and len(notes) == 2


def test_a_catalogue_of_one_item_is_one_clear_error(tmp_path, capsys):
    path = tmp_path / "one.csv"
    path.write_text("user,item\n" + "".join(f"u{u},only\n" for u in range(10)))
    code = cli.main(["train", "--data", str(path), *TOPN_FLAGS, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code != 0 and "one.csv" in err and "at least two" in err and "Traceback" not in err


def test_rating_runs_save_their_split_and_query_predictions(tmp_path, monkeypatch):
    data = write_ratings(tmp_path / "ratings.csv", scale=5)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "warm.sampled.csv.gz").write_bytes(b"an earlier top-N evaluation's rows")  # removed, not mixed in
    (tmp_path / "p" / "notes.txt").write_text("the user's own file: kept")
    (tmp_path / "p" / "ratings.split.csv.gz").write_bytes(b"a user's file of the same suffix: kept")
    (tmp_path / "p" / "new_item.topk.csv.gz").mkdir()  # a folder: never touched
    with data.open("a") as f:  # 30 users with 4 ratings each: too few to be a task anywhere (counted, said)
        f.write("".join(f"{u},{100 + (u + j) % 40},{1 + j}\n" for u in range(500, 530) for j in range(4)))
    lines = capture(monkeypatch)
    flags = ["--model", "mf", "--model-kwargs", '{"embed": 4}', "--order", "first", "--inner-steps", "1",
             "--batch-size", "8", "--baselines", "global_mean,user_mean", "--bootstrap", "10",
             "--no-progress"]  # fmt: skip
    code = cli.main(["train", "--data", str(data), "--columns", "user,item,rating", *flags, "--epochs", "1",
                     "--out", str(tmp_path / "run"), "--save-predictions", str(tmp_path / "p")])  # fmt: skip
    assert code == 0
    theirs = {"notes.txt", "ratings.split.csv.gz", "new_item.topk.csv.gz"}
    files = sorted(p.name for p in (tmp_path / "p").iterdir() if p.name not in theirs)
    assert files and all(f.endswith(".csv.gz") for f in files) and "warm.sampled.csv.gz" not in files
    assert all((tmp_path / "p" / name).exists() for name in theirs)
    scenario = files[0].split(".")[0]
    split = pd.read_csv(tmp_path / "p" / f"{scenario}.split.csv.gz")
    predictions = pd.read_csv(tmp_path / "p" / f"{scenario}.predictions.csv.gz")
    assert set(predictions.columns) == {"user", "item", "maml", "global_mean", "user_mean"}
    query = split[split.role == "query"]
    assert len(predictions) == len(query)
    assert set(zip(predictions.user, predictions.item, strict=True)) == set(zip(query.user, query.item, strict=True))
    assert predictions[["maml", "global_mean", "user_mean"]].notna().all().all()
    # the saved predictions reproduce the reported MAE of the scenario
    document = json.loads((tmp_path / "run" / "metrics.json").read_text())
    merged = predictions.merge(query, on=["user", "item"])
    low, high = document["rating_scale"]  # what MAE clips a prediction to, recorded for an outside tool
    assert (low, high) == (1, 5)
    for method in ("user_mean", "maml"):
        mae = np.mean(np.abs(np.clip(merged[method], low, high) - merged["target"]))
        assert mae == pytest.approx(document["scenarios"][scenario][method]["mae"], rel=1e-5)
    # the users no task holds are counted in metrics.json and said beside the table, as top-N runs count them
    tasks = document["tasks"]
    assert {"train", "validation", *document["scenarios"]} <= set(tasks)
    for name, methods in document["scenarios"].items():
        assert tasks[name]["tasks"] == methods["maml"]["users"]
    left_out = {name: stats["users_dropped"] for name, stats in tasks.items() if name != "train"}
    assert sum(left_out.values()) >= 10, left_out  # most of the 30 short users are outside meta-training
    notes = [line for line in lines if line.startswith("note: ")]
    for name, dropped in left_out.items():
        said = [n for n in notes if n.startswith(f"note: {name}: ")]
        assert len(said) == (1 if dropped or tasks[name]["tasks"] < cli.FEW_USERS else 0), (name, notes)
        assert not dropped or f"{dropped} user(s) left out: too few or too many ratings" in said[0]
    assert any("validation users" in n and "rest on them" in n for n in notes), notes  # 60 users: few validate


def test_a_declared_rating_scale_is_the_models(tmp_path, monkeypatch, capsys):
    """The scale was the meta-train ratings' least and greatest: on a 0.5-10 scale where nobody gave 0.5, predictions
    were clipped at 1 and a new user's 0.5 refused. ``--rating-scale`` declares it; a rating outside it is named."""
    data = write_ratings(tmp_path / "ratings.csv", scale=10)
    lines = capture(monkeypatch)
    flags = ["--model", "mf", "--model-kwargs", '{"embed": 4}', "--order", "first", "--inner-steps", "1",
             "--batch-size", "8", "--baselines", "global_mean", "--bootstrap", "10", "--no-progress",
             "--epochs", "1"]  # fmt: skip
    run = tmp_path / "run"
    argv = ["train", "--data", str(data), "--columns", "user,item,rating", *flags, "--out", str(run)]
    assert cli.main([*argv, "--rating-scale", "0.5,10"]) == 0
    assert json.loads((run / "metrics.json").read_text())["rating_scale"] == [0.5, 10.0]
    mine = tmp_path / "mine.csv"
    mine.write_text("item,rating\n100,0.5\n101,10\n")
    lines.clear()
    assert cli.main(["recommend", "--checkpoint", str(run), "--ratings", str(mine), "-k", "3"]) == 0
    assert "2 rating(s)" in "\n".join(lines)
    lines.clear()
    assert cli.main([*argv, "--rating-scale", "2,10", "--out", str(tmp_path / "r2")]) == 1
    said = "\n".join(lines) + capsys.readouterr().err
    assert "is outside the rating scale [2, 10]" in said and "rating 1 of user" in said
    assert cli.main([*argv, "--rating-scale", "10,2", "--out", str(tmp_path / "r3")]) != 0
    assert "low < high" in "\n".join(lines) + capsys.readouterr().err
    learned = tmp_path / "learned.csv"  # a scale learned from the ratings: 0.3 is 0.30000001 in float32
    learned.write_text(data.read_text().replace(",1\n", ",0.3\n", 1))
    assert (
        cli.main(
            ["train", "--data", str(learned), "--columns", "user,item,rating", *flags, "--out", str(tmp_path / "l")]
        )
        == 0
    )
    mine.write_text("item,rating\n100,0.3\n")
    lines.clear()
    assert cli.main(["recommend", "--checkpoint", str(tmp_path / "l"), "--ratings", str(mine), "-k", "3"]) == 0, lines
    from jaxrec.experiment.trained import load_trained
    from jaxrec.serve.requests import Catalogue

    assert len(Catalogue(load_trained(tmp_path / "l")).support([("100", 0.3)], None, 8).codes) == 1  # served too
    edge = tmp_path / "edge"  # a declared scale's ends are on it as float32 keeps a rating (10.3 is 10.3000002)
    assert cli.main([*argv, "--rating-scale", "0.3,10.3", "--out", str(edge)]) == 0
    mine.write_text("item,rating\n100,0.3\n101,10.3\n")
    lines.clear()
    assert cli.main(["recommend", "--checkpoint", str(edge), "--ratings", str(mine), "-k", "3"]) == 0, lines
    assert "2 rating(s)" in "\n".join(lines)


def test_binary_target_runs_save_the_labels_they_scored(tmp_path, monkeypatch):
    """With ``--implicit true`` the split's target was the raw rating, not the 0/1 label the metrics use."""
    data = write_ratings(tmp_path / "ratings.csv", scale=5)
    capture(monkeypatch)
    flags = ["--model", "mf", "--model-kwargs", '{"embed": 4}', "--order", "first", "--inner-steps", "1",
             "--batch-size", "8", "--baselines", "global_mean", "--bootstrap", "10", "--no-progress",
             "--implicit", "true", "--epochs", "1"]  # fmt: skip
    code = cli.main(["train", "--data", str(data), "--columns", "user,item,rating", *flags,
                     "--out", str(tmp_path / "run"), "--save-predictions", str(tmp_path / "p")])  # fmt: skip
    assert code == 0
    split = pd.read_csv(next((tmp_path / "p").glob("*.split.csv.gz")))
    assert set(split["target"]) == {0.0, 1.0} and (split["target"] == (split["rating"] >= 4)).all()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["rating_scale"] is None


def test_recommend_takes_a_list_of_item_ids_and_ranks_unseen_items(topn_run, tmp_path, monkeypatch):
    lines = capture(monkeypatch)
    items = tmp_path / "mine.txt"
    items.write_text("song-00\nsong-02\nsong-04\nsong-99\n")  # an even taste, and one unknown id
    assert cli.main(["recommend", "--checkpoint", str(topn_run["out"]), "--ratings", str(items), "-k", "5"]) == 0
    text = "\n".join(lines)
    assert "3 interaction(s)" in text and "unknown item id(s): song-99" in text
    # the run re-ranks (--rerank melu) and has a hybrid: which of them lists is said, not left to be assumed
    # the run keeps a re-ranker and a hybrid: which of them lists, and why, is said, not left to be assumed
    chosen = json.loads((topn_run["out"] / "reranker.json").read_text())["validation"]
    if chosen["lists"] == "rerank":
        assert (
            "these lists are the meta-learner's top 50 re-ranked by melu, as the run's method 'rerank' lists " in text
        )
        assert "--no-rerank: maml+itemknn's" in text
    else:
        assert "these lists are maml+itemknn's, not the meta-learner's top 50 re-ranked by melu" in text
    figures = f"{chosen['users']} validation users' ndcg@20 {chosen['rerank']:.4f} re-ranked against"
    assert f"{figures} {chosen['maml+itemknn']:.4f} for maml+itemknn" in text
    listed = [line.split("(item ")[1].split(",")[0] for line in lines if "(item " in line]
    assert len(listed) == 5 and not {"song-00", "song-02", "song-04"} & set(listed)
    scored = [line for line in lines if "(item " in line]
    # the same items as rows of weight 1 give the same list: a bare id is one interaction of weight 1
    lines.clear()
    rows = tmp_path / "mine.csv"
    rows.write_text("item,plays\nsong-00,1\nsong-02,1\nsong-04,1\n")
    assert cli.main(["recommend", "--checkpoint", str(topn_run["out"]), "--ratings", str(rows), "-k", "5"]) == 0
    assert [line for line in lines if "(item " in line] == scored  # the same items with the same scores


def test_model_alone_lists_the_meta_learners_own_in_the_command_and_the_service(topn_run, tmp_path, monkeypatch):
    """A run with a hybrid and a re-ranker listed only by them: ``--model-alone`` lists the adapted meta-learner's
    own (the run's method 'maml', what ``export --model-alone`` writes), in ``recommend`` and ``serve``."""
    from jaxrec.experiment.recommend import TopNRecommender, read_ratings_for
    from jaxrec.experiment.trained import load_trained

    run = topn_run["out"]
    mine = tmp_path / "mine.txt"
    mine.write_text("song-01\nsong-03\nsong-05\nsong-07\n")
    codes, weights, _, _ = read_ratings_for(str(run), str(mine))
    trained = load_trained(run, rerank=False)
    alone = TopNRecommender(trained, trained.params, hybrid=None, reranker=None).top_k(codes, weights, 10)[0]
    hybrid = TopNRecommender(trained, trained.params, reranker=None).top_k(codes, weights, 10)[0]
    assert trained.hybrid is not None and list(alone) != list(hybrid)
    lines = capture(monkeypatch)
    argv = ["recommend", "--checkpoint", str(run), "--ratings", str(mine), "-k", "10"]
    assert cli.main([*argv, "--model-alone"]) == 0
    listed = [line.split("(item ")[1].split(",")[0] for line in lines if "(item " in line]
    assert listed == [trained.item_ids[c] for c in alone]
    assert "note: these lists are maml's (--model-alone), not the run's maml+itemknn" in lines
    assert any("these lists are maml's: --model-alone" in line for line in lines)  # the re-ranker's note
    assert cli.main([*argv, "--model-alone", "--rerank"]) == 2  # one way to list at a time: a usage error
    server = Server(run, "--batch-sizes", "1", "--support-sizes", "8", "--model-alone")
    try:
        health = server.get("/health")[1]
        status, answer = server.post("/recommend", {"interactions": ["song-01", "song-03", "song-05", "song-07"]})
    finally:
        server.stop()
    assert health["ranking"] == "maml" and status == 200, answer
    assert [r["item"] for r in answer["recommendations"]] == [trained.item_ids[c] for c in alone]


def test_a_re_ranking_run_lists_its_re_ranked_candidates_in_the_command_the_library_and_the_service(
    topn_run, tmp_path, monkeypatch
):
    """A run trained with ``--rerank melu`` keeps its re-ranker and the validation users' choice of lists: the
    re-ranked ones where they rank those users better than the hybrid's. Re-ranked (``--rerank``, or that choice),
    ``recommend``, the library and ``serve`` list the meta-learner's top 50 (the recall stage: the adapted model
    alone, as ``rerank`` was evaluated) re-scored by the adapted re-ranker; ``/predict`` answers its scores."""
    from jaxrec.experiment.recommend import TopNRecommender, read_ratings_for
    from jaxrec.experiment.trained import load_trained

    run = topn_run["out"]
    chosen = json.loads((run / "reranker.json").read_text())["validation"]
    tasks = json.loads((run / "metrics.json").read_text())["tasks"]
    # by nDCG, which sees the order the re-ranker gives its candidates, on the run's validation users
    assert chosen["metric"] == "ndcg@20" and set(chosen) == {"metric", "rerank", "maml+itemknn", "lists", "users"}
    assert chosen["users"] == tasks["validation"]["tasks"] and 0 < chosen["rerank"] < 1
    assert chosen["lists"] == ("rerank" if chosen["rerank"] > chosen["maml+itemknn"] else "maml+itemknn")
    by_default = load_trained(run)
    assert by_default.reranker.lists == (chosen["lists"] == "rerank")
    assert (TopNRecommender(by_default, by_default.params).reranker is not None) == by_default.reranker.lists
    trained = load_trained(run, rerank=True)  # re-ranked whatever the validation users chose
    assert trained.reranker.name == "melu" and trained.reranker.candidates == 50 and trained.reranker.lists
    mine = tmp_path / "mine.txt"
    mine.write_text("song-01\nsong-03\nsong-05\nsong-07\n")
    codes, weights, _, _ = read_ratings_for(str(run), str(mine))
    reranked = TopNRecommender(trained, trained.params)
    best, scores = reranked.top_k(codes, weights, 10)
    # the recall stage is the model alone (no hybrid, no recency), its top 50 re-ordered by the re-ranker's scores
    recall = TopNRecommender(trained, trained.params, hybrid=None, reranker=None)
    recall.recency = 0.0
    candidates = recall.top_k(codes, weights, 50)[0]
    every = reranked.scores(codes, weights)
    order = candidates[np.argsort(-every[candidates], kind="stable")]
    assert list(best) == list(order[:10])
    np.testing.assert_allclose(scores, every[best], rtol=1e-5, atol=1e-6)
    assert list(best) != list(candidates[:10])  # the re-ranker changed the list
    assert list(TopNRecommender(trained, trained.params, reranker=None).top_k(codes, weights, 10)[0]) != list(best)
    # a re-ranker's score that is not a number is refused, as the recall stage's is (the service answers a 422)
    broken = TopNRecommender(trained, trained.params)
    broken._rerank_scores = lambda state, rows, mask, item_rows, items: np.where(items == best[0], np.nan, 0.0)
    with pytest.raises(ValueError, match="scores for this user are not finite"):
        broken.top_k(codes, weights, 10)
    # the command lists the same
    lines = capture(monkeypatch)
    assert cli.main(["recommend", "--checkpoint", str(run), "--ratings", str(mine), "-k", "10", "--rerank"]) == 0
    assert "the meta-learner's top 50 re-ranked by melu:" in "\n".join(lines)
    listed = [line.split("(item ")[1].split(",")[0] for line in lines if "(item " in line]
    assert listed == [trained.item_ids[c] for c in best]
    # and the service, its scores and a probe's the re-ranker's
    server = Server(run, "--batch-sizes", "1,4", "--support-sizes", "8", "--rerank")
    try:
        health = server.get("/health")[1]
        status, answer = server.post(
            "/recommend", {"interactions": ["song-01", "song-03", "song-05", "song-07"], "k": 10}
        )
        probe = ["song-09", "song-02", "song-01"]
        _, predicted = server.post(
            "/predict", {"interactions": ["song-01", "song-03", "song-05", "song-07"], "candidates": probe}
        )
        too_many = server.post("/recommend", {"interactions": ["song-01"], "k": 51})
    finally:
        server.stop()
    assert health["ranking"] == "rerank"
    assert health["reranker"] == {"model": "melu", "candidates": 50, "lists": True, "validation": chosen}
    assert health["max_k"] == 50  # a re-ranked list holds at most the recall stage's candidates
    assert status == 200
    assert [r["item"] for r in answer["recommendations"]] == [trained.item_ids[c] for c in best]
    np.testing.assert_allclose([r["score"] for r in answer["recommendations"]], scores, rtol=1e-5, atol=1e-5)
    by_id = {str(i): c for c, i in enumerate(trained.item_ids)}
    got = {p["item"]: p["score"] for p in predicted["scores"]}
    np.testing.assert_allclose([got[i] for i in probe], [every[by_id[i]] for i in probe], rtol=1e-5, atol=1e-5)
    assert too_many[0] == 422 and "k: at most 50, got 51" in str(too_many[1])


def test_a_changed_or_missing_re_ranker_file_is_one_clear_error(topn_run, tmp_path, monkeypatch):
    import shutil

    import flax.serialization

    from jaxrec.experiment.checkpoint import CheckpointError, file_sha256
    from jaxrec.experiment.run import check_fresh_out
    from jaxrec.experiment.trained import load_trained

    copy = tmp_path / "run"
    shutil.copytree(topn_run["out"], copy)
    params = copy / "reranker.msgpack"
    # parameters of another shape, their checksum recorded: named as not the model's, not left to fail later
    stored = flax.serialization.msgpack_restore(params.read_bytes())
    first = next(iter(stored["0"]["params"]))
    layer = stored["0"]["params"][first]
    layer[next(iter(layer))] = np.zeros((1, 1), np.float32)
    kept = params.read_bytes()
    params.write_bytes(flax.serialization.msgpack_serialize(stored))
    record = json.loads((copy / "reranker.json").read_text())
    (copy / "reranker.json").write_text(
        json.dumps({**record, "params": {**record["params"], "sha256": file_sha256(params)}})
    )
    with pytest.raises(CheckpointError, match="re-ranker's parameters are not those of its model"):
        load_trained(copy)
    params.write_bytes(kept + b"x")
    with pytest.raises(CheckpointError, match="reranker.msgpack have changed since training"):
        load_trained(copy)
    params.unlink()
    with pytest.raises(CheckpointError, match="reranker.msgpack are missing"):
        load_trained(copy)
    (copy / "reranker.json").write_text("{")
    with pytest.raises(CheckpointError, match="re-ranker record is unreadable"):
        load_trained(copy)
    # a re-ranker trained for another config of the run (a resume stopped before its end wrote its own): not used
    shutil.copy(topn_run["out"] / "reranker.msgpack", params)
    (copy / "reranker.json").write_text(json.dumps(record))
    assert load_trained(copy).reranker is not None
    record["config"]["meta"]["epochs"] = record["config"]["meta"]["epochs"] + 1
    (copy / "reranker.json").write_text(json.dumps(record))
    assert load_trained(copy).reranker is None
    lines = capture(monkeypatch)
    (tmp_path / "mine.txt").write_text("song-01\nsong-03\n")
    assert cli.main(["recommend", "--checkpoint", str(copy), "--ratings", str(tmp_path / "mine.txt"), "-k", "3"]) == 0
    assert "these lists are maml+itemknn's: the run's kept re-ranker was trained for another config" in "\n".join(lines)
    check_fresh_out(copy, overwrite=True)  # a new run in the folder removes the old run's re-ranker
    assert not (copy / "reranker.json").exists()


@pytest.mark.parametrize("rerank", [True, False], ids=["reranked", "hybrid"])
def test_recommend_users_ranks_a_file_of_users_as_recommend_ranks_each_alone(topn_run, rerank, tmp_path, monkeypatch):
    """A file of 71 new users (more than one compiled batch, of several sizes; rows shuffled, put back in order by
    their time; an unknown item, a repeated one, a user who knows no item, one who has every item) gets, user by
    user, the list and scores ``jaxrec recommend --ratings`` gives that user alone (the run re-ranks its lists,
    weighs plays; with ``--no-rerank`` it ranks by its hybrid, weighs plays and the order)."""
    from jaxrec.experiment.recommend import TopNRecommender, read_ratings_for
    from jaxrec.experiment.trained import load_trained
    from jaxrec.serve import batch

    monkeypatch.setattr(batch, "_FULL_BATCH_SUPPORT", 16)  # long users fewer a call: 64 of 16 items, 16 of 64
    rng = np.random.default_rng(1)
    rows = []
    for u in range(71):
        for t, song in enumerate(rng.choice(60, 45 if u == 70 else 3 + u % 9, replace=False)):
            rows.append((f"new-{u}", f"song-{song:02d}", 1 + (u + song) % 4, 10 * t))
    rows += [("new-0", "song-99", 3, 5), (rows[-1][0], rows[-1][1], 2, 999), ("lost", "song-98", 1, 0)]
    rows += [("every", f"song-{song:02d}", 1, song) for song in range(60)]
    shuffled = [rows[i] for i in rng.permutation(len(rows))]
    table = tmp_path / "users.tsv"
    table.write_text("visitor\tsong\tplays\twhen\n" + "".join("\t".join(map(str, r)) + "\n" for r in shuffled))
    lines = capture(monkeypatch)
    out = tmp_path / "lists.csv"
    flags = ["--columns", "user=visitor,item=song,weight=plays,timestamp=when", "-k", "5", "--out", str(out)]
    flags += ["--rerank"] if rerank else ["--no-rerank"]
    assert cli.main(["recommend", "--checkpoint", str(topn_run["out"]), "--users", str(table), *flags]) == 0
    text = "\n".join(lines)
    assert (
        f"read {len(rows)} row(s) of 73 user(s); 2 unknown item(s) ignored, 1 duplicate(s) merged; lists for 73 "
        "user(s), 360 row(s)" in text
    )
    assert "1 user(s) with no item the model knows: the model's list before adaptation, as the service" in text
    assert "users given the list before adaptation, e.g. lost" in text
    assert "1 user(s) already have every item: an empty list" in text
    assert ("re-ranked by melu, as the run's method 'rerank' lists (--rerank)" in text) == rerank
    assert ("these lists are maml+itemknn's: --no-rerank" in text) != rerank
    lists = pd.read_csv(out, dtype={"user": str, "item": str})
    assert list(lists.columns) == ["user", "rank", "item", "score"] and lists["user"].nunique() == 72
    listed = [user for user in pd.unique(pd.Series([r[0] for r in shuffled])) if user != "every"]
    assert list(pd.unique(lists["user"])) == listed  # in the order of the file
    if not rerank:  # a user of no known item: the list the service answers such a user, the model's before adaptation
        server = Server(topn_run["out"], "--batch-sizes", "1", "--support-sizes", "8", "--no-rerank")
        try:
            status, answer = server.post("/recommend", {"interactions": ["song-98"], "k": 5})
        finally:
            server.stop()
        assert status == 200 and answer["input"]["used"] == 0
        assert lists[lists["user"] == "lost"]["item"].tolist() == [r["item"] for r in answer["recommendations"]]
    trained = load_trained(topn_run["out"])
    recommender = TopNRecommender(trained, trained.params, reranker=trained.reranker if rerank else None)
    for u in [*range(0, 70, 9 if rerank else 3), 70]:  # every third (ninth) user, and the long one
        mine = sorted((r for r in rows if r[0] == f"new-{u}"), key=lambda r: r[3])
        alone = tmp_path / f"user{u}.csv"
        alone.write_text("item,plays\n" + "".join(f"{r[1]},{r[2]}\n" for r in mine))
        codes, weights, _, seen = read_ratings_for(str(topn_run["out"]), str(alone))
        best, scores = recommender.top_k(codes, weights, 5, exclude=seen)
        got = lists[lists["user"] == f"new-{u}"]
        assert got["rank"].tolist() == [1, 2, 3, 4, 5], u
        assert got["item"].tolist() == [trained.item_ids[c] for c in best], u
        np.testing.assert_allclose(got["score"].to_numpy(), scores, rtol=1e-5, atol=1e-5)


def test_recommend_never_lists_the_items_of_exclude_and_counts_its_unknown_ids(topn_run, tmp_path, monkeypatch):
    """``--exclude FILE`` (out of stock, withdrawn) leaves its items out of every list, for one user and a file of
    users alike: each list is the library's ``top_k(..., exclude=...)`` (the next best items, not a shorter list)."""
    from jaxrec.experiment.recommend import TopNRecommender, read_ratings_for
    from jaxrec.experiment.trained import load_trained

    run = str(topn_run["out"])
    trained = load_trained(run)
    recommender = TopNRecommender(trained, trained.params)
    mine = tmp_path / "mine.txt"
    mine.write_text("song-00\nsong-02\nsong-04\n")
    codes, weights, _, seen = read_ratings_for(run, str(mine))
    plain, _ = recommender.top_k(codes, weights, 5, exclude=seen)
    withdrawn = [trained.item_ids[c] for c in plain[:3]]  # the three best, and ids the catalogue does not hold
    gone = tmp_path / "withdrawn.txt"
    gone.write_text("\n".join([*withdrawn, "song-00", "song-77", '"song-78"']) + "\n\n")
    excluded = np.union1d(plain[:3], codes[:1])
    best, scores = recommender.top_k(codes, weights, 5, exclude=np.union1d(seen, excluded))
    assert not set(best) & set(plain[:3])
    lines = capture(monkeypatch)
    assert cli.main(["recommend", "--checkpoint", run, "--ratings", str(mine), "-k", "5", "--exclude", str(gone)]) == 0
    text = "\n".join(lines)
    assert "--exclude: 4 item(s) never recommended; 2 id(s) not in the catalogue (song-77, song-78)" in text
    assert [line.split("(item ")[1].split(",")[0] for line in lines if "(item " in line] == [
        trained.item_ids[c] for c in best
    ]
    users = tmp_path / "users.csv"
    users.write_text("user,item\na,song-00\na,song-02\na,song-04\nb,song-10\nb,song-11\n")
    out = tmp_path / "lists.csv"
    flags = ["--users", str(users), "-k", "5", "--exclude", str(gone), "--out", str(out)]
    assert cli.main(["recommend", "--checkpoint", run, *flags]) == 0
    lists = pd.read_csv(out, dtype={"user": str, "item": str})
    assert lists[lists["user"] == "a"]["item"].tolist() == [trained.item_ids[c] for c in best]
    np.testing.assert_allclose(lists[lists["user"] == "a"]["score"].to_numpy(), scores, rtol=1e-5, atol=1e-5)
    b_codes = np.array([list(trained.item_ids).index(s) for s in ("song-10", "song-11")])
    b_best, _ = recommender.top_k(b_codes, np.ones(2, np.float32), 5, exclude=excluded)
    assert lists[lists["user"] == "b"]["item"].tolist() == [trained.item_ids[c] for c in b_best]
    assert not set(withdrawn) & set(lists["item"])
    missing = tmp_path / "none.txt"
    assert cli.main(["recommend", "--checkpoint", run, "--ratings", str(mine), "--exclude", str(missing)]) == 1


def test_recommend_users_names_the_file_and_line_of_bad_input(topn_run, tmp_path, capsys):
    run = str(topn_run["out"])
    cases = {
        "user\tsong\n1\tsong-00\n": "no item column among the header",
        "user\titem\tplays\nu\tsong-00\tmany\n": "column 'plays' line 2 is not a finite number: 'many'",
        "user\titem\tplays\nu\tsong-00\t-1\n": "user 'u'",
        "user\titem\ttimestamp\nu\tsong-00\t2024-01-08\n\n\nu\tsong-01\tsoon\n": "'timestamp' line 5 is not an ISO",
        "user\titem\tplays\nu\tsong-00\t1\nu\tsong-00\t1e39\n": "line 3 (user 'u'): weight 1e+39 is beyond",
    }
    for i, (content, words) in enumerate(cases.items()):
        table = tmp_path / f"bad{i}.tsv"
        table.write_text(content)
        assert cli.main(["recommend", "--checkpoint", run, "--users", str(table)]) == 1
        err = capsys.readouterr().err
        assert str(table) in err and words in err, err
    assert cli.main(["recommend", "--checkpoint", run, "--ratings", str(table), "--out", "x.csv"]) == 1
    assert "jaxrec: error: --out goes with --users (one user's --ratings list" in capsys.readouterr().err
    assert cli.main(["recommend", "--checkpoint", run, "--ratings", str(table), "--sep", ",", "--columns", "a,b"]) == 1
    assert "jaxrec: error: --columns, --sep go with --users" in capsys.readouterr().err
    table.write_text("user\titem\nu\tsong-00\n")
    assert cli.main(["recommend", "--checkpoint", run, "--users", str(table), "--out", str(tmp_path)]) == 1
    assert "is a folder: name the CSV file to write" in capsys.readouterr().err


def test_recommend_users_in_the_logs_own_layout_is_read_by_the_runs_columns(topn_run, tmp_path, monkeypatch):
    """The run read its log by --columns user,item,weight,timestamp; a file of new users in that layout, with a
    header of none of the common names, failed for want of --columns: it is read by the run's, and says so."""
    run = str(topn_run["out"])
    body = "a\tsong-00\t3\t5\na\tsong-02\t1\t6\nb\tsong-11\t2\t9\n"
    named, own = tmp_path / "named.tsv", tmp_path / "own.tsv"
    named.write_text("user\titem\tweight\ttimestamp\n" + body)
    own.write_text("listener\ttrack\tcount\twhen\n" + body)
    lists = {}
    for table in (named, own):
        lines = capture(monkeypatch)
        out = tmp_path / f"{table.stem}.csv"
        assert cli.main(["recommend", "--checkpoint", run, "--users", str(table), "-k", "5", "--out", str(out)]) == 0
        lists[table.stem] = pd.read_csv(out, dtype=str)
        said = [line for line in lines if "read by the run's --columns user,item,weight,timestamp" in line]
        assert len(said) == (1 if table is own else 0), lines
    pd.testing.assert_frame_equal(lists["own"], lists["named"])
    assert set(lists["own"]["user"]) == {"a", "b"}
    # a file that fits neither: the error says why the run's layout does not fit it either (it named a missing
    # common name alone)
    short = tmp_path / "short.tsv"
    short.write_text("listener\ttrack\tcount\na\tsong-00\t3\n")
    lines = capture(monkeypatch)
    assert cli.main(["recommend", "--checkpoint", run, "--users", str(short), "-k", "5"]) == 1
    assert f"{short}: no user column among the header ['listener', 'track', 'count']" in lines[-1], lines
    assert "and the run's own --columns user,item,weight,timestamp do not fit it (the columns given name 4" in lines[-1]
    assert lines[-1].endswith("name the file's columns with --columns (e.g. --columns user=<name>,item=<name>)")


def test_recommend_reads_a_weighted_models_second_column_as_the_training_log_was_read(topn_run, tmp_path, monkeypatch):
    """The run was trained on play counts, each a confidence in the fold-in; a new user's counts were read as 1
    each, so `recommend` and the service ranked other lists than the evaluation of the same support."""
    from jaxrec.experiment.recommend import recommender_for
    from jaxrec.experiment.trained import load_trained

    lines = capture(monkeypatch)
    rows = tmp_path / "mine.csv"
    rows.write_text("item,plays\nsong-00,30\nsong-02,1\nsong-04,2\nsong-00,10\n")  # song-00 twice: 40 plays
    assert cli.main(["recommend", "--checkpoint", str(topn_run["out"]), "--ratings", str(rows), "-k", "5"]) == 0
    text = "\n".join(lines)
    assert "the second column is each one's weight" in text and "1 duplicate interaction(s): weights summed" in text
    listed = [line.split("(item ")[1].split(",")[0] for line in lines if "(item " in line]
    shown = [float(line.rsplit("score ", 1)[1].rstrip(")")) for line in lines if "(item " in line]
    trained = load_trained(topn_run["out"])
    assert trained.weighted
    ids = list(trained.item_ids)
    # song-00 where it first happened (the training log merges duplicates at their earliest time), its plays summed
    codes = np.array([ids.index("song-00"), ids.index("song-02"), ids.index("song-04")], np.int32)
    recommender = recommender_for(trained)
    best, scores = recommender.top_k(codes, np.array([40, 1, 2], np.float32), 5)
    assert listed == [ids[c] for c in best]
    np.testing.assert_allclose(shown, scores, atol=0.006)  # printed to two decimals
    unweighted = recommender.top_k(codes, np.ones(3, np.float32), 5)[1]
    assert np.abs(np.asarray(unweighted) - scores).max() > 0.01  # the weights move the scores
    rows.write_text("item,plays\nsong-00,3\nsong-02,0\n")
    assert cli.main(["recommend", "--checkpoint", str(topn_run["out"]), "--ratings", str(rows)]) == 1


@pytest.mark.parametrize(
    ("codes", "weights", "k", "message"),
    [
        ([0, 1, -1], [1, 1, 1], 5, r"item_codes\[2\] = -1 is not an item code .*item_codes_of gives -1"),
        ([0, 1, 10**6], [1, 1, 1], 5, r"item_codes\[2\] = 1000000 is not an item code"),
        ([], [], 5, "an empty support"),
        ([0, 1, 1, 2, 2, 2], [1] * 6, 5, "item 1 is given 2 times"),
        ([0, 1, 2], [1], 5, "1 weights for 3 items"),
        ([0, 1, 2], [3, np.nan, 5], 5, r"weights\[1\] .* is nan, not a finite number"),
        ([0, 1, 2], [3, -3, 5], 5, r"weights\[1\] .* is -3.0: a weight must be > 0"),
        (["song-00"], [1], 5, "integer item codes"),
        ([0, 1, 2], [1, 1, 1], 0, "k must be a positive integer"),
    ],
)
def test_the_library_recommender_refuses_a_support_it_cannot_use(topn_run, codes, weights, k, message):
    """The command and the service check a new user's items; the library's recommender used to take anything: a
    NaN weight ranked the user's own items first, and a -1 code (an unknown id) dropped the catalogue's last item."""
    from jaxrec.experiment.recommend import TopNRecommender
    from jaxrec.experiment.trained import load_trained

    trained = load_trained(topn_run["out"])
    recommender = TopNRecommender(trained, trained.params)
    with pytest.raises(ValueError, match=message):
        recommender.top_k(codes, weights, k)
    best, scores = recommender.top_k([0, 1, 2], [1.0, 2.0, 1.0], 5)
    assert len(best) == 5 and not set(best.tolist()) & {0, 1, 2} and np.all(np.isfinite(scores))


def test_a_user_with_every_item_gets_an_empty_list_not_an_error(topn_run, tmp_path, monkeypatch):
    """No item is left to contrast theirs with: the negatives' draw had an empty range (ValueError: high <= 0)."""
    lines = capture(monkeypatch)
    catalogue = pd.read_csv(topn_run["out"] / "items.csv.gz", dtype=str, keep_default_na=False)["raw_id"]
    every = tmp_path / "every.txt"
    every.write_text("\n".join(catalogue) + "\n")
    assert cli.main(["recommend", "--checkpoint", str(topn_run["out"]), "--ratings", str(every), "-k", "5"]) == 0
    assert f"top 0 of {len(catalogue)} items" in "\n".join(lines)
    lines.clear()
    every.write_text("\n".join(catalogue[1:]) + "\n")  # all but one: that one is the list
    assert cli.main(["recommend", "--checkpoint", str(topn_run["out"]), "--ratings", str(every), "-k", "5"]) == 0
    assert [line.split("(item ")[1].split(",")[0] for line in lines if "(item " in line] == [catalogue[0]]


def test_more_devices_than_the_machine_has_is_refused_clearly(topn_run, tmp_path, capsys):
    # top-N runs shard over --devices (tests/multidevice/test_topn_devices.py); this process has one device
    argv = ["train", "--data", str(topn_run["data"]), "--columns", "user,item,weight,timestamp", *TOPN_FLAGS,
            "--devices", "2", "--out", str(tmp_path / "r")]  # fmt: skip
    assert cli.main(argv) != 0
    err = capsys.readouterr().err
    assert "devices" in err and "Traceback" not in err


def test_the_supports_recency_is_chosen_per_method_and_served_in_the_order_sent(tmp_path, monkeypatch):
    """A new user's support is their first interactions in time and the query those that follow: with
    ``--support-recency`` each fold-in weighs the newest most, its strength chosen per method on the validation users,
    and recommend and serve weigh a request's items in the order sent, the oldest first."""
    from jaxrec.experiment.recommend import TopNRecommender
    from jaxrec.experiment.trained import load_trained

    data = write_plays(tmp_path / "plays.tsv")
    out = tmp_path / "run"
    lines = capture(monkeypatch)
    argv = ["train", "--data", str(data), "--columns", "user,item,weight,timestamp", *TOPN_FLAGS, "--epochs", "1",
            "--topn-baselines", "popular,itemknn,ease", "--hybrid", "itemknn", "--support-recency", "2",
            "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0, lines
    tuned = json.loads((out / "metrics.json").read_text())["tuned"]["support_recency"]
    assert set(tuned) == {"maml", "itemknn", "ease"}  # popular reads no support
    assert all(record["strength"] == 2.0 for record in tuned.values())
    assert json.loads((out / "support_recency.json").read_text())["maml"] == 2.0
    assert json.loads((out / "hybrid.json").read_text())["partner_recency"] == 2.0
    trained = load_trained(out)
    assert trained.support_recency == 2.0 and trained.hybrid.recency == 2.0
    ids = list(trained.item_ids)
    codes = np.array([ids.index(s) for s in ("song-00", "song-02", "song-04")], np.int32)
    recommender = TopNRecommender(trained, trained.params, hybrid=None)
    forward = recommender.model_scores(codes, np.ones(3, np.float32))
    backward = recommender.model_scores(codes[::-1], np.ones(3, np.float32))
    assert np.abs(forward - backward).max() > 1e-4  # the order weighs
    unweighted = TopNRecommender(dataclasses.replace(trained, support_recency=0.0), trained.params, hybrid=None)
    weights = np.exp(2.0 * np.arange(3) / 2)
    np.testing.assert_allclose(  # the same as weights given by hand, scaled to mean 1
        forward, unweighted.model_scores(codes, (weights * 3 / weights.sum()).astype(np.float32)), rtol=1e-5, atol=1e-6
    )
    partner = trained.hybrid.partner_scores(codes[None, :], np.ones((1, 3), bool))
    flipped = trained.hybrid.partner_scores(codes[None, ::-1], np.ones((1, 3), bool))
    assert np.abs(partner - flipped).max() > 1e-6
    # a warm user's support is their latest interactions, not in time order: no weighting there (it weighed random
    # items), so each method's warm figures are those of the same run without the grid (a hybrid's weight, chosen on
    # validation users whose supports are weighed, may differ); the new users' are not
    plain = tmp_path / "plain"
    assert cli.main([*argv[: argv.index("--support-recency")], "--out", str(plain)]) == 0
    weighed = json.loads((out / "metrics.json").read_text())["scenarios"]
    unweighed = json.loads((plain / "metrics.json").read_text())["scenarios"]
    alone = [name for name in weighed["warm"] if "+" not in name]
    assert len(alone) == 4 and all(weighed["warm"][name] == unweighed["warm"][name] for name in alone)
    assert any(weighed["new_user"][name]["ndcg@10"] != unweighed["new_user"][name]["ndcg@10"] for name in alone)


def test_a_re_ranker_given_the_whole_catalogue_is_warned_of(tmp_path, caplog):
    """``--rerank-candidates`` at or above the catalogue's size leaves no retrieval stage: said once, at the start."""
    from jaxrec import data as jd
    from jaxrec.experiment import ExperimentConfig, TopNExperiment

    plays = jd.from_csv(write_plays(tmp_path / "plays.tsv"), "user,item,weight,timestamp", feedback="implicit")
    fields = {"feedback": "implicit", "model": "twotower", "shots": 3, "rerank": "melu", "epochs": 1}
    with caplog.at_level("WARNING", logger="jaxrec.experiment.topn"):
        TopNExperiment(ExperimentConfig.make(**fields, rerank_candidates=59), plays)
        assert "whole catalogue" not in caplog.text
        TopNExperiment(ExperimentConfig.make(**fields, rerank_candidates=60), plays)
    assert caplog.text.count("rerank_candidates=60 is the whole catalogue (60 items)") == 1


def test_a_run_of_ratings_read_as_interactions_records_it_for_its_new_users(tmp_path, monkeypatch):
    """The play log's counts read as ratings without a threshold: each row an interaction, its repeated pairs
    making a weighted run. The run records it, and reads a new user's ratings alike: each an interaction; stopped
    in its evaluation, it says how to evaluate the saved training."""
    import signal

    from jaxrec.experiment.checkpoint import read_metadata
    from jaxrec.experiment.recommend import read_ratings_for
    from jaxrec.experiment.run import Interrupted
    from jaxrec.experiment.trained import load_trained

    def interrupted(*args, **kwargs):
        raise Interrupted(signal.SIGINT)

    data, out = write_plays(tmp_path / "plays.tsv"), tmp_path / "run"
    flags = ["--columns", "user,item,rating,timestamp", *TOPN_FLAGS, "--epochs", "1"]
    # stopped in its evaluation, the run says how to evaluate its saved training (it said nothing of it before)
    lines = capture(monkeypatch)
    monkeypatch.setattr(cli, "_evaluate", interrupted)
    assert cli.main(["train", "--data", str(data), *flags, "--out", str(out)]) == 130
    assert (
        f"interrupted by SIGINT; the training is saved in {out / 'checkpoints'}; evaluate it with: jaxrec train"
        in (lines[-1])
    ), lines
    assert "--resume" in lines[-1]
    meta = read_metadata(out / "checkpoints")
    assert meta["ratings_as_interactions"] is True and meta["weighted"] is True
    assert load_trained(out).ratings_as_interactions
    mine = tmp_path / "mine.csv"
    mine.write_text("item,rating\nsong-00,5\nsong-02,1\nsong-00,3\n")
    read = read_ratings_for(str(out), str(mine))
    assert read.codes.size == 2 and sorted(read.values.tolist()) == [1.0, 2.0]  # song-00 twice: two interactions
