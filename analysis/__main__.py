"""``python -m analysis RESULTS_DIR``: the same as the ``w2s-analyze`` console script."""

from analysis.cli import main

raise SystemExit(main())
