"""jaxrec: meta-learned cold-start recommendation in JAX."""

from jaxrec.batch import BatchShapeError, TaskBatch, validate_batch
from jaxrec.features import FeatureSpec
from jaxrec.losses import bce_loss, bpr_loss, l2_to_init, masked_mean, mse_loss, with_auxiliary

__version__ = "0.1.0"
