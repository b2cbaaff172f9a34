"""Experiments: the cold-start protocol (:class:`Experiment`, :class:`ExperimentConfig`; the top-N protocol of implicit
feedback, :class:`TopNExperiment`; :func:`build_experiment` picks one by the config), the methods it compares,
the run engine of ``jaxrec train`` (checkpoints, resume, signals), the trained model of a run folder, the
recommender, the checkpoint store, and the choice of a configuration on the validation users."""

from jaxrec.experiment.checkpoint import CheckpointError, CheckpointStore, load_checkpoint, read_metadata
from jaxrec.experiment.choose import Choice, choose
from jaxrec.experiment.config import (
    BASELINES,
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    MetaConfig,
    ModelConfig,
    ProtocolConfig,
    resolve,
)
from jaxrec.experiment.protocol import Experiment
from jaxrec.experiment.recommend import (
    Recommender,
    TopNRecommender,
    item_codes_of,
    read_user_ratings,
    recommender_for,
)
from jaxrec.experiment.run import RunError, TrainingRun, build_experiment, restore_run
from jaxrec.experiment.topn import TopNExperiment
from jaxrec.experiment.trained import TrainedModel, load_trained

__all__ = [
    "BASELINES",
    "CheckpointError",
    "CheckpointStore",
    "Choice",
    "DataConfig",
    "EvalConfig",
    "Experiment",
    "ExperimentConfig",
    "MetaConfig",
    "ModelConfig",
    "ProtocolConfig",
    "Recommender",
    "RunError",
    "TopNExperiment",
    "TopNRecommender",
    "TrainedModel",
    "TrainingRun",
    "build_experiment",
    "choose",
    "load_checkpoint",
    "load_trained",
    "read_metadata",
    "item_codes_of",
    "read_user_ratings",
    "recommender_for",
    "resolve",
    "restore_run",
]
