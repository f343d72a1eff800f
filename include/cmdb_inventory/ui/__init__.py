"""The coverage page: the latest snapshot's manifest as an accounts x regions grid in the Airflow UI."""
