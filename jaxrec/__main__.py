"""``python -m jaxrec``: the ``jaxrec`` command."""

from jaxrec.cli import main

raise SystemExit(main())
