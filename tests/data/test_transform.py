"""Exact token and label lists from the tiny Llama-3 tokenizer, and truncation rules.

The tiny vocabulary is byte level: a text's token ids are its UTF-8 bytes. The special tokens sit
at 256-268, so every expected list below is written from the chat template by hand.
"""

import pytest

from medcap.data import MedcapTransform, SequenceTooLongError, to_messages

BOS, EOS, PAD, START_HEADER, END_HEADER, EOT, IMAGE = 256, 257, 260, 262, 263, 265, 268
IGNORE = -100
NUM_IMAGE_TOKENS = 4


def text_ids(text):
    """Token ids of ``text`` in the byte-level vocabulary."""
    return list(text.encode("utf-8"))


def header(role):
    """``<|start_header_id|>role<|end_header_id|>\\n\\n``."""
    return [START_HEADER, *text_ids(role), END_HEADER, 10, 10]


def tokenize(tiny_tokenizer, turns, has_image, max_seq_len=512):
    transform = MedcapTransform(tiny_tokenizer, num_image_tokens=NUM_IMAGE_TOKENS, max_seq_len=max_seq_len)
    return transform.tokenize(to_messages(turns, has_image))


def test_special_token_ids(tiny_tokenizer):
    assert (tiny_tokenizer.bos_id, tiny_tokenizer.eos_id, tiny_tokenizer.pad_id) == (BOS, EOS, PAD)
    assert (tiny_tokenizer.start_header_id, tiny_tokenizer.end_header_id, tiny_tokenizer.eot_id) == (
        START_HEADER, END_HEADER, EOT,
    )
    assert tiny_tokenizer.image_id == IMAGE


def test_single_turn_with_image_exact_lists(tiny_tokenizer):
    tokens, labels = tokenize(tiny_tokenizer, [("user", "Is there a spot?"), ("assistant", "yes")], has_image=True)
    # "user" = 117 115 101 114; "Is there a spot?" = 73 115 32 116 104 101 114 101 32 97 32 115 112 111 116 63;
    # "assistant" = 97 115 115 105 115 116 97 110 116; "yes" = 121 101 115; "\n\n" = 10 10.
    expected_tokens = [
        256,
        262, 117, 115, 101, 114, 263, 10, 10,
        268, 268, 268, 268,
        73, 115, 32, 116, 104, 101, 114, 101, 32, 97, 32, 115, 112, 111, 116, 63, 265,
        262, 97, 115, 115, 105, 115, 116, 97, 110, 116, 263, 10, 10, 121, 101, 115, 265,
        257,
    ]
    expected_labels = (
        [-100] * (1 + 8 + 4 + 17)
        + [262, 97, 115, 115, 105, 115, 116, 97, 110, 116, 263, 10, 10, 121, 101, 115, 265]
        + [-100]
    )
    assert tokens == expected_tokens
    assert labels == expected_labels


def test_multi_turn_labels_every_answer_and_no_question(tiny_tokenizer):
    turns = [("user", "Organ?"), ("assistant", "liver"), ("user", "Normal?"), ("assistant", "no")]
    tokens, labels = tokenize(tiny_tokenizer, turns, has_image=True)
    first_user = header("user") + [IMAGE] * NUM_IMAGE_TOKENS + text_ids("Organ?") + [EOT]
    first_answer = header("assistant") + text_ids("liver") + [EOT]
    second_user = header("user") + text_ids("Normal?") + [EOT]
    second_answer = header("assistant") + text_ids("no") + [EOT]
    assert tokens == [BOS] + first_user + first_answer + second_user + second_answer + [EOS]
    assert labels == (
        [IGNORE] * (1 + len(first_user)) + first_answer + [IGNORE] * len(second_user) + second_answer + [IGNORE]
    )
    assert tokens.count(IMAGE) == NUM_IMAGE_TOKENS  # the image goes in the first user turn only


def test_text_only_record_has_no_image_ids(tiny_tokenizer):
    tokens, labels = tokenize(tiny_tokenizer, [("user", "Define CT."), ("assistant", "A scan.")], has_image=False)
    user = header("user") + text_ids("Define CT.") + [EOT]
    answer = header("assistant") + text_ids("A scan.") + [EOT]
    assert tokens == [BOS] + user + answer + [EOS]
    assert labels == [IGNORE] * (1 + len(user)) + answer + [IGNORE]
    assert IMAGE not in tokens


def test_image_marker_in_the_middle_places_placeholders_there(tiny_tokenizer):
    turns = [("user", "Look at <image> and answer: spot?"), ("assistant", "yes")]
    tokens, labels = tokenize(tiny_tokenizer, turns, has_image=True)
    # torchtune's Llama-3 tokenizer strips each text item, so the spaces next to the image go.
    user = header("user") + text_ids("Look at") + [IMAGE] * NUM_IMAGE_TOKENS + text_ids("and answer: spot?") + [EOT]
    answer = header("assistant") + text_ids("yes") + [EOT]
    assert tokens == [BOS] + user + answer + [EOS]
    assert labels == [IGNORE] * (1 + len(user)) + answer + [IGNORE]
    assert b"<image>" not in bytes(t for t in tokens if t < 256)


def test_image_marker_in_a_later_turn(tiny_tokenizer):
    turns = [("user", "Hi."), ("assistant", "Hello."), ("user", "<image>What is it?"), ("assistant", "CT")]
    tokens, _ = tokenize(tiny_tokenizer, turns, has_image=True)
    first_exchange = header("user") + text_ids("Hi.") + [EOT] + header("assistant") + text_ids("Hello.") + [EOT]
    second_user = header("user") + [IMAGE] * NUM_IMAGE_TOKENS + text_ids("What is it?") + [EOT]
    assert tokens == [BOS] + first_exchange + second_user + header("assistant") + text_ids("CT") + [EOT, EOS]


def test_system_turn_is_not_labelled(tiny_tokenizer):
    turns = [("system", "Be brief."), ("user", "Spot?"), ("assistant", "no")]
    tokens, labels = tokenize(tiny_tokenizer, turns, has_image=True)
    system = header("system") + text_ids("Be brief.") + [EOT]
    user = header("user") + [IMAGE] * NUM_IMAGE_TOKENS + text_ids("Spot?") + [EOT]
    answer = header("assistant") + text_ids("no") + [EOT]
    assert tokens == [BOS] + system + user + answer + [EOS]
    assert labels == [IGNORE] * (1 + len(system) + len(user)) + answer + [IGNORE]


def test_train_on_input_labels_text_but_never_placeholders(tiny_tokenizer):
    transform = MedcapTransform(tiny_tokenizer, num_image_tokens=NUM_IMAGE_TOKENS, max_seq_len=512)
    messages = to_messages([("user", "Spot?"), ("assistant", "no")], True, train_on_input=True)
    tokens, labels = transform.tokenize(messages)
    # torchtune's Llama-3 tokenizer never trains on bos and eos
    assert labels == [IGNORE] + [IGNORE if token == IMAGE else token for token in tokens[1:-1]] + [IGNORE]


def test_generation_prompt_ends_with_assistant_header(tiny_tokenizer):
    transform = MedcapTransform(tiny_tokenizer, num_image_tokens=NUM_IMAGE_TOKENS, max_seq_len=512)
    messages = to_messages([("user", "Spot?"), ("assistant", "")], True)
    tokens, _ = transform.tokenize(messages, add_end_tokens=False)
    user = header("user") + [IMAGE] * NUM_IMAGE_TOKENS + text_ids("Spot?") + [EOT]
    assert tokens == [BOS] + user + header("assistant")


# --- truncation ---------------------------------------------------------------------------------

MULTI_TURN = [("user", "Organ?"), ("assistant", "liver"), ("user", "Normal?"), ("assistant", "no")]
# Positions in the untruncated sequence (BOS at 0):
IMAGE_START = 1 + len(header("user"))  # 9
FIRST_ANSWER_START = IMAGE_START + NUM_IMAGE_TOKENS + len("Organ?") + 1  # 20
FIRST_ANSWER_END = FIRST_ANSWER_START + len(header("assistant")) + len("liver") + 1  # 39, exclusive


def test_truncation_positions_match_the_template(tiny_tokenizer):
    tokens, labels = tokenize(tiny_tokenizer, MULTI_TURN, has_image=True)
    assert tokens[IMAGE_START: IMAGE_START + NUM_IMAGE_TOKENS] == [IMAGE] * NUM_IMAGE_TOKENS
    assert labels[FIRST_ANSWER_START - 1] == IGNORE and labels[FIRST_ANSWER_START] == START_HEADER
    assert labels[FIRST_ANSWER_END - 1] == EOT and labels[FIRST_ANSWER_END] == IGNORE


@pytest.mark.parametrize("max_seq_len", [FIRST_ANSWER_END, FIRST_ANSWER_END + 3, 60])
def test_truncation_cutting_a_later_answer_keeps_the_first(tiny_tokenizer, max_seq_len):
    full_tokens, full_labels = tokenize(tiny_tokenizer, MULTI_TURN, has_image=True)
    assert len(full_tokens) > max_seq_len  # the second answer is cut (or dropped)
    tokens, labels = tokenize(tiny_tokenizer, MULTI_TURN, has_image=True, max_seq_len=max_seq_len)
    assert tokens == full_tokens[:max_seq_len]
    assert labels == full_labels[:max_seq_len]
    assert labels[FIRST_ANSWER_START:FIRST_ANSWER_END] == header("assistant") + text_ids("liver") + [EOT]


@pytest.mark.parametrize("max_seq_len", [IMAGE_START, IMAGE_START + 2, IMAGE_START + NUM_IMAGE_TOKENS - 1])
def test_truncation_through_the_image_is_an_error(tiny_tokenizer, max_seq_len):
    with pytest.raises(SequenceTooLongError, match=f"max_seq_len={max_seq_len} would cut image placeholders"):
        tokenize(tiny_tokenizer, MULTI_TURN, has_image=True, max_seq_len=max_seq_len)


@pytest.mark.parametrize("max_seq_len", [FIRST_ANSWER_START, FIRST_ANSWER_END - 1])
def test_truncation_through_the_first_answer_is_an_error(tiny_tokenizer, max_seq_len):
    with pytest.raises(SequenceTooLongError, match=f"max_seq_len={max_seq_len} would cut the first answer"):
        tokenize(tiny_tokenizer, MULTI_TURN, has_image=True, max_seq_len=max_seq_len)


def test_train_on_input_truncates_a_later_answer(tiny_tokenizer):
    transform = MedcapTransform(tiny_tokenizer, num_image_tokens=NUM_IMAGE_TOKENS, max_seq_len=512)
    full_tokens, full_labels = transform.tokenize(to_messages(MULTI_TURN, True, train_on_input=True))
    transform.max_seq_len = FIRST_ANSWER_END + 3
    tokens, labels = transform.tokenize(to_messages(MULTI_TURN, True, train_on_input=True))
    assert (tokens, labels) == (full_tokens[: FIRST_ANSWER_END + 3], full_labels[: FIRST_ANSWER_END + 3])
    transform.max_seq_len = FIRST_ANSWER_END - 1
    with pytest.raises(SequenceTooLongError, match="would cut the first answer"):
        transform.tokenize(to_messages(MULTI_TURN, True, train_on_input=True))


def test_sequence_that_fits_exactly_is_untouched(tiny_tokenizer):
    full_tokens, full_labels = tokenize(tiny_tokenizer, MULTI_TURN, has_image=True)
    tokens, labels = tokenize(tiny_tokenizer, MULTI_TURN, has_image=True, max_seq_len=len(full_tokens))
    assert (tokens, labels) == (full_tokens, full_labels)


def test_call_transforms_the_image(tiny_tokenizer):
    import PIL.Image
    import torch

    from medcap.data import open_clip_image_transform

    transform = MedcapTransform(tiny_tokenizer, NUM_IMAGE_TOKENS, 512, image_transform=open_clip_image_transform(32))
    image = PIL.Image.new("RGB", (48, 40), (255, 255, 255))
    sample = transform({"messages": to_messages([("user", "Spot?"), ("assistant", "no")], True), "image": image})
    assert sample["tokens"].count(IMAGE) == NUM_IMAGE_TOKENS
    assert sample["image"].shape == (3, 32, 32)
    # white normalised with CLIP's mean/std: (1 - mean) / std per channel
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    expected = torch.tensor([(1 - m) / s for m, s in zip(mean, std)])
    torch.testing.assert_close(sample["image"][:, 16, 16], expected, rtol=1e-5, atol=1e-5)
