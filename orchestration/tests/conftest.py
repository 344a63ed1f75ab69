from __future__ import annotations

import os
import tempfile

# Airflow writes its config and a SQLite database under AIRFLOW_HOME on import: keep them out of
# the user's home. Set before any test module imports airflow.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="airflow-test-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
