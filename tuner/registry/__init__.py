"""The MLflow Model Registry side: the registered pyfunc model (``pyfunc``), the test evaluation
of a candidate (``evaluation``), promotion of a study's best trial to ``champion``
(``promotion``) and hyper-ensembles (``ensembles``). Networks are built, loaded and run by
:mod:`tuner.models.io`.
"""
