"""A tuning study: flags and YAML to a resolved configuration (``config``), search spaces
(``search_space``), trial resources (``resources``), ASHA (``asha``), one family's Ray Tune run
(``search``), the agreement of Tune's saved state on resume (``tune_state``) and the driver that
runs every family of a study under one MLflow parent run (``driver``).

Nothing is imported here: ``tuner/run.py --help`` stays fast and importing a module of this
package starts nothing.
"""
