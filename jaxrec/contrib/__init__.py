"""Experimental features: kept working and tested, but validation found no gain for them on the datasets tried,
so their interface may change. :mod:`jaxrec.contrib.grouping`: task grouping (several initialisations)."""
