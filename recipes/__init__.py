"""medcap recipes: run with `tune run recipes/<name>.py` (repository root first on PYTHONPATH) or `python recipes/<name>.py`."""
