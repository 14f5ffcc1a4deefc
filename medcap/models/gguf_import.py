"""Moved to :mod:`medcap.convert.gguf` (an offline converter, not a model).

A transition alias for callers of the old path (tests/conftest.py, tests/recipes/test_llm_judge.py);
remove it once they import ``medcap.convert.gguf``.
"""

from medcap.convert.gguf import OUTPUT_FILES, convert_gguf, find_smollm2_gguf, is_converted  # noqa: F401
