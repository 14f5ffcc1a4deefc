"""Shared fixtures: tiny seeded assets (tokenizer, decoder, vision tower, data)."""

import pytest


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory):
    """Tiny tokenizer, decoder checkpoint, vision tower and dataset written once per session."""
    from medcap.utils.tiny import write_tiny_assets

    root = tmp_path_factory.mktemp("tiny_assets")
    paths = write_tiny_assets(root)
    paths["root"] = root
    return paths


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_assets):
    from medcap.models import llama3_tokenizer

    return llama3_tokenizer(str(tiny_assets["path"]), special_tokens_path=str(tiny_assets["special_tokens_path"]))

