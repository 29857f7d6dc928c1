"""Figures and tables from result files; never trains anything."""
