# Copyright (c) medcap contributors.
#
# This source code is licensed under the BSD-style license found in the
# LICENSE file in the root directory of this source tree.

"""ChatMLTokenizer on the tokenizer converted from SmolLM2-135M-Instruct's GGUF."""

import json

import jinja2
import pytest
from torchtune.data import Message
from torchtune.modules.transforms.tokenizers import HuggingFaceBaseTokenizer


from medcap.models.smollm2 import smollm2_tokenizer

IMAGE = 49152
# Token ids of SmolLM2's vocabulary, with their byte-level strings.
IM_START, IM_END, NEWLINE = 1, 2, 198  # "<|im_start|>", "<|im_end|>", "Ċ"
USER, ASSISTANT = [4093], [520, 9531]  # "user"; "ass" "istant"


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    return smollm2_tokenizer(str(smollm2_dir))


def conversation():
    return [
        Message(
            role="user",
            content=[{"type": "image"}, {"type": "text", "content": "What organ is shown?"}],
            masked=True,
        ),
        Message(role="assistant", content="The liver.", masked=False),
        Message(role="user", content="Is it normal?", masked=True),
        Message(role="assistant", content="Yes, 2 lobes.", masked=False),
    ]


def test_two_turn_conversation_with_image_exact_tokens_and_mask(tokenizer):
    tokens, mask = tokenizer.tokenize_messages(conversation())
    vocab = tokenizer.base_tokenizer.tokenizer
    expected = [
        # <|im_start|>user\n<image>What organ is shown?<|im_end|>\n
        (IM_START, True), (USER[0], True), (NEWLINE, True), (IMAGE, True),
        ("What", True), ("Ġorgan", True), ("Ġis", True), ("Ġshown", True), ("?", True),
        (IM_END, True), (NEWLINE, True),
        # <|im_start|>assistant\nThe liver.<|im_end|>\n  -- trained except the final newline
        (IM_START, False), (ASSISTANT[0], False), (ASSISTANT[1], False), (NEWLINE, False),
        ("The", False), ("Ġliver", False), (".", False), (IM_END, False), (NEWLINE, True),
        # <|im_start|>user\nIs it normal?<|im_end|>\n
        (IM_START, True), (USER[0], True), (NEWLINE, True),
        ("Is", True), ("Ġit", True), ("Ġnormal", True), ("?", True), (IM_END, True), (NEWLINE, True),
        # <|im_start|>assistant\nYes, 2 lobes.<|im_end|>\n  -- digits are split from the space
        (IM_START, False), (ASSISTANT[0], False), (ASSISTANT[1], False), (NEWLINE, False),
        ("Yes", False), (",", False), ("Ġ", False), ("2", False), ("Ġlobes", False), (".", False),
        (IM_END, False), (NEWLINE, True),
    ]
    expected_tokens = [vocab.token_to_id(t) if isinstance(t, str) else t for t, _ in expected]
    assert tokens == expected_tokens
    assert mask == [masked for _, masked in expected]
    assert tokens[:20] == [1, 4093, 198, 49152, 1780, 1192, 314, 3057, 47, 2, 198,
                           1, 520, 9531, 198, 504, 5969, 30, 2, 198]  # fmt: skip


def test_generation_prompt_ends_with_assistant_header(tokenizer):
    messages = conversation()[:3] + [Message(role="assistant", content="")]
    tokens, mask = tokenizer.tokenize_messages(messages, add_end_tokens=False)
    full_tokens, _ = tokenizer.tokenize_messages(conversation()[:3])
    assert tokens == full_tokens + [IM_START] + ASSISTANT + [NEWLINE]
    assert len(mask) == len(tokens)
    assert tokenizer.decode(tokens[-4:], skip_special_tokens=False) == "<|im_start|>assistant\n"
    # Without end tokens the last message stays open even when it has content.
    tokens, _ = tokenizer.tokenize_messages(conversation()[:1], add_end_tokens=False)
    assert tokens[-1] == tokenizer.encode("?")[0]


def test_matches_the_gguf_chat_template(tokenizer, smollm2_dir):
    """Rendering the GGUF's own Jinja template and encoding the text gives the same ids."""
    template = jinja2.Template((smollm2_dir / "chat_template.jinja").read_text())
    chat = [
        {"role": "system", "content": "You are a radiologist."},
        {"role": "user", "content": "Describe the image in 3 words."},
        {"role": "assistant", "content": "Left lung opacity."},
        {"role": "user", "content": "Is it pneumonia?"},
    ]
    text = template.render(messages=chat, add_generation_prompt=True)
    messages = [Message(role=m["role"], content=m["content"]) for m in chat]
    messages.append(Message(role="assistant", content=""))
    tokens, _ = tokenizer.tokenize_messages(messages, add_end_tokens=False)
    assert tokens == tokenizer.encode(text)


@pytest.mark.parametrize(
    "text",
    [
        "Chest X-ray 2024: 12.5 mm nodule, naïve café — 肺 ✓",
        "  two leading spaces,  double  spaces\n\ttab and trailing  ",
        "x123456 ÄÖÜ 🙂 end",
    ],
)
def test_encode_decode_round_trip(tokenizer, text):
    token_ids = tokenizer.encode(text)
    assert tokenizer.decode(token_ids) == text
    assert all(0 <= token_id < tokenizer.vocab_size for token_id in token_ids)


def test_digits_are_individual_tokens(tokenizer):
    vocab = tokenizer.base_tokenizer.tokenizer
    assert [vocab.id_to_token(i) for i in tokenizer.encode("in 2024")] == ["in", "Ġ", "2", "0", "2", "4"]


def test_decode_drops_image_and_special_tokens(tokenizer):
    the = tokenizer.encode("The")
    assert tokenizer.decode([IM_START, IMAGE] + the + [IM_END, 0]) == "The"
    assert tokenizer.decode([IMAGE] + the + [IM_END], skip_special_tokens=False) == "The<|im_end|>"


def test_special_ids(tokenizer, smollm2_dir):
    assert (tokenizer.eos_id, tokenizer.stop_tokens, tokenizer.bos_id) == (2, [2, 0], None)
    assert tokenizer.pad_id == 2  # the GGUF's tokenizer.ggml.padding_token_id
    assert (tokenizer.vocab_size, tokenizer.image_token_id) == (49152, IMAGE)
    assert tokenizer.encode("hi", add_eos=True)[-1] == IM_END
    assert {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}.items() <= tokenizer.special_tokens.items()
    base = HuggingFaceBaseTokenizer(
        str(smollm2_dir / "tokenizer.json"),
        tokenizer_config_json_path=str(smollm2_dir / "tokenizer_config.json"),
        generation_config_path=str(smollm2_dir / "generation_config.json"),
    )
    assert (base.bos_id, base.eos_id, base.hf_adds_bos, base.hf_adds_eos) == (1, 2, False, False)
    config = json.loads((smollm2_dir / "tokenizer_config.json").read_text())
    assert config["add_bos_token"] is False


def test_custom_image_token_and_truncation(smollm2_dir):
    tokenizer = smollm2_tokenizer(str(smollm2_dir / "tokenizer.json"), image_token_id=50000)
    tokens, _ = tokenizer.tokenize_messages(conversation()[:1])
    assert tokens[3] == 50000 and IMAGE not in tokens
    short = smollm2_tokenizer(str(smollm2_dir), max_seq_len=5)
    sample = short({"messages": conversation()}, inference=False)
    assert sample["tokens"] == [IM_START, USER[0], NEWLINE, IMAGE, 1780]
    assert sample["mask"] == [True] * 5 and "messages" not in sample


def test_bad_input_raises(tokenizer, smollm2_dir):
    with pytest.raises(ValueError, match="image_token_id 100 is a text token"):
        smollm2_tokenizer(str(smollm2_dir), image_token_id=100)
    with pytest.raises(ValueError, match="message 1: role 'ipython'"):
        tokenizer.tokenize_messages([conversation()[0], Message(role="ipython", content="x")])
    with pytest.raises(ValueError, match="message 0 content item 1: unsupported type 'video'"):
        tokenizer.tokenize_messages(
            [Message(role="user", content=[{"type": "text", "content": "a"}, {"type": "video"}])]
        )
    with pytest.raises(ValueError, match="no BOS"):
        tokenizer.encode("hi", add_bos=True)
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        smollm2_tokenizer(str(smollm2_dir / "missing_dir"))
