"""The model transform: messages -> token ids with image placeholders, labels and pixels.

A chat tokenizer following torchtune's ``ModelTokenizer`` contract emits one image id per image
content item. This transform widens each into ``num_image_tokens`` placeholders (one per image
embedding the projector produces), builds labels (only unmasked, i.e. assistant, tokens are
trained) and truncates without ever cutting an image or losing the first answer.
"""

from typing import Any, Callable, Dict, List, Optional, Tuple

from torchtune.data import Message

CROSS_ENTROPY_IGNORE_IDX = -100


def image_token_id_of(tokenizer: Any) -> int:
    """The image placeholder id of a tokenizer (``image_token_id`` or torchtune's ``image_id``)."""
    token_id = getattr(tokenizer, "image_token_id", None)
    if token_id is None:
        token_id = getattr(tokenizer, "image_id", None)
    if token_id is None:
        raise ValueError(f"{type(tokenizer).__name__} has no image placeholder token (image_token_id / image_id)")
    return token_id


class SequenceTooLongError(ValueError):
    """A record that cannot be truncated to ``max_seq_len`` without losing an image or its answer."""


class MedcapTransform:
    """Tokenize messages for a :class:`~medcap.models.fusion.MedcapModel`.

    Args:
        tokenizer: a torchtune-style chat tokenizer (``tokenize_messages``, ``pad_id``, an image id).
        num_image_tokens (int): placeholders per image (the model's ``num_image_tokens``).
        max_seq_len (int): longest token sequence.
        image_transform (Optional[Callable]): PIL image -> ``[3, h, w]`` tensor.
    """

    def __init__(
        self, tokenizer: Any, num_image_tokens: int, max_seq_len: int, image_transform: Optional[Callable] = None
    ):
        self.tokenizer = tokenizer
        self.num_image_tokens = num_image_tokens
        self.max_seq_len = max_seq_len
        self.image_transform = image_transform
        self.image_token_id = image_token_id_of(tokenizer)
        self.pad_id = tokenizer.pad_id

    def tokenize(self, messages: List[Message], *, add_end_tokens: bool = True) -> Tuple[List[int], List[int]]:
        """Token ids and labels for a conversation.

        Args:
            messages (List[Message]): the conversation; image items mark where images go.
            add_end_tokens (bool): False for a generation prompt (ends with the assistant header).

        Returns:
            Tuple[List[int], List[int]]: ``tokens`` and ``labels`` of equal length; labels are the
            token ids where trained and ``-100`` elsewhere (they are shifted by the loss).

        Raises:
            SequenceTooLongError: if truncation would cut an image or the first answer.
        """
        tokens, labels, _ = self.tokenize_with_length(messages, add_end_tokens=add_end_tokens)
        return tokens, labels

    def tokenize_with_length(
        self, messages: List[Message], *, add_end_tokens: bool = True
    ) -> Tuple[List[int], List[int], int]:
        """:meth:`tokenize`, plus the length before truncation (more than ``max_seq_len`` when the
        record was truncated: its later turns are not trained)."""
        raw_tokens, raw_mask = self.tokenizer.tokenize_messages(messages, add_end_tokens=add_end_tokens)
        tokens, masked = self._expand_images(raw_tokens, raw_mask)
        labels = [CROSS_ENTROPY_IGNORE_IDX if m else t for t, m in zip(tokens, masked)]
        if len(tokens) > self.max_seq_len:
            # Where the answers are, whatever ``masked`` says (``train_on_input`` unmasks user turns).
            answers_only = [
                Message(role=m.role, content=m.content, masked=m.role != "assistant", ipython=m.ipython, eot=m.eot)
                for m in messages
            ]
            _, answer_mask = self.tokenizer.tokenize_messages(answers_only, add_end_tokens=add_end_tokens)
            _, not_answer = self._expand_images(raw_tokens, answer_mask)
            self._check_truncation(tokens, not_answer)
            return tokens[: self.max_seq_len], labels[: self.max_seq_len], len(tokens)
        return tokens, labels, len(tokens)

    def _expand_images(self, raw_tokens: List[int], raw_mask: List[bool]) -> Tuple[List[int], List[bool]]:
        """Widen each image id into ``num_image_tokens`` masked placeholders."""
        tokens: List[int] = []
        masked: List[bool] = []
        for token, is_masked in zip(raw_tokens, raw_mask):
            repeat = self.num_image_tokens if token == self.image_token_id else 1
            tokens += [token] * repeat
            masked += [True if token == self.image_token_id else is_masked] * repeat
        return tokens, masked

    def _check_truncation(self, tokens: List[int], not_answer: List[bool]) -> None:
        limit = self.max_seq_len
        if self.image_token_id in tokens[limit:]:
            last_placeholder = len(tokens) - tokens[::-1].index(self.image_token_id)
            raise SequenceTooLongError(
                f"max_seq_len={limit} would cut image placeholders (the image ends at token {last_placeholder}, "
                f"sequence has {len(tokens)} tokens); raise max_seq_len"
            )
        first = next((i for i, is_other in enumerate(not_answer) if not is_other), None)
        if first is None:
            return  # a generation prompt: no answer
        end_of_first_answer = next((i for i in range(first, len(not_answer)) if not_answer[i]), len(not_answer))
        if end_of_first_answer > limit:
            raise SequenceTooLongError(
                f"max_seq_len={limit} would cut the first answer (it ends at token {end_of_first_answer}, "
                f"sequence has {len(tokens)} tokens); raise max_seq_len or shorten the record"
            )

    def __call__(self, sample: Dict[str, Any]) -> Dict[str, Any]:
        """Transform ``{"messages": [...], "image": PIL or None}`` into model inputs.

        Returns:
            Dict[str, Any]: ``tokens``, ``labels`` and ``image`` (a ``[3, h, w]`` tensor or None).
        """
        tokens, labels = self.tokenize(sample["messages"])
        image = sample.get("image")
        if image is not None and self.image_transform is not None:
            image = self.image_transform(image)
        return {"tokens": tokens, "labels": labels, "image": image}


def medcap_transform(
    tokenizer: Any,
    max_seq_len: int,
    image_transform: Optional[Callable] = None,
    num_image_tokens: int = 0,
) -> MedcapTransform:
    """Model-transform builder for configs (``_component_: medcap.data.medcap_transform``).

    The config node holds the tokenizer, the image transform and ``max_seq_len``; the recipes give
    ``num_image_tokens`` from the built model (the projector decides it), so it is never written twice.

    Args:
        tokenizer: the built chat tokenizer.
        max_seq_len (int): longest token sequence.
        image_transform (Optional[Callable]): the built image transform.
        num_image_tokens (int): placeholders per image.

    Returns:
        MedcapTransform: the transform.
    """
    return MedcapTransform(tokenizer, num_image_tokens, max_seq_len, image_transform=image_transform)


def check_transform_fits_model(transform: MedcapTransform, model: Any) -> None:
    """Fail early, naming both config keys, when the transform and the model disagree.

    Checks the image placeholder id (``model_transform.tokenizer`` vs ``model.image_token_id``) and
    the image side (``model_transform.image_transform`` output vs the tower's ``image_size``).

    Raises:
        ValueError: on a mismatch.
    """
    if model.image_encoder is None:
        return
    if transform.image_token_id != model.image_token_id:
        raise ValueError(
            f"model_transform.tokenizer has image token id {transform.image_token_id} but "
            f"model.image_token_id is {model.image_token_id}: set them to the same id"
        )
    tower_size = getattr(model.image_encoder.vision_tower, "image_size", None)
    if transform.image_transform is None or tower_size is None:
        return
    import PIL.Image

    probe = transform.image_transform(PIL.Image.new("RGB", (2 * tower_size, tower_size)))  # [3, h, w]
    if tuple(probe.shape[-2:]) != (tower_size, tower_size):
        raise ValueError(
            f"model_transform.image_transform gives {tuple(probe.shape[-2:])} images but the vision tower "
            f"(model.vision_tower.image_size) expects {tower_size}x{tower_size}: set both image sizes alike"
        )
