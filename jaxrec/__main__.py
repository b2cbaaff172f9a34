"""``python -m jaxrec``: the ``jaxrec`` command (through its launcher, so that signals are handled as there)."""

from jaxrec_launcher import main

raise SystemExit(main())
