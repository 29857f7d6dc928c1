"""reports: figures and tables from result files (``python -m reports continual|nas ...``); it never trains."""

import dm_core.startup  # noqa: F401  (first: a Ctrl-C while torch, Avalanche or NNI load is one line)
