"""Plain functions recipe -> result; no printing here (report.py renders)."""
