"""`lenstune report`: one page of an experiment's results, read from MLflow alone.

collect.py reads what is shown, figures.py draws it, page.py writes ``index.html`` (images
inline, no network), ``README.md``, ``leaderboard.csv`` and the PNGs, and logs the folder to the
study run.
"""
