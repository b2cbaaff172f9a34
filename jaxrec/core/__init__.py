"""The pure-JAX core: the batch contract, losses, parameter paths and adapt filters, the inner loop and its solvers,
the meta-objectives, Meta-SGD and the trainer.

Nothing here imports pandas or the layers above (data, models, evaluation, experiment). With :mod:`jaxrec.scale`
it forms the base of the package: scale's modules read only the core's contract modules (batch, losses, params),
and the objectives and the trainer use scale's sharding, task-local embeddings and row-sparse updates.
"""
