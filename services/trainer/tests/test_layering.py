"""The API process validates requests without MLflow, skops or matplotlib: only the workers load
them (they cost seconds of start-up and hundreds of MB)."""

from __future__ import annotations

import subprocess
import sys


def test_the_api_imports_neither_mlflow_nor_skops_nor_matplotlib() -> None:
    # A fresh interpreter: this test session has imported them already.
    check = (
        "import sys, trainer.app; "
        "print(sorted({'mlflow', 'skops', 'matplotlib'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
