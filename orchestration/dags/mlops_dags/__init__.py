"""Task logic of the platform's DAGs, kept out of the DAG files so it is unit-tested on its own."""
