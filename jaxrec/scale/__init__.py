"""Scaling: task-axis sharding over devices and hosts, task-local embedding rows, row-sparse outer updates of
large tables, host memory reuse on CPU, and mixed precision.

Every module here is pure JAX and imports from the core only its contract modules (:mod:`jaxrec.core.batch`,
:mod:`jaxrec.core.losses`, :mod:`jaxrec.core.params`).
"""
