"""MLflow tracking: the names of every tag, metric and stop reason (``schema``), the runs a
study writes (``writer``), a study read back (``reader``), which store a command opens
(``store``) and credentials for a protected server (``auth``).
"""
