"""Experimental features: working and tested, but they show no gain in validation on the datasets evaluated, so
their interface may change. :mod:`jaxrec.contrib.grouping`: task grouping (several initialisations)."""
