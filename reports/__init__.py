"""reports: figures and tables from result files (``python -m reports continual|nas ...``); it never trains."""
