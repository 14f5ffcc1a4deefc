# Copyright (c) medcap contributors.
#
# This source code is licensed under the BSD-style license found in the
# LICENSE file in the root directory of this source tree.

"""ChatML model tokenizer (SmolLM2 and other ``<|im_start|>`` / ``<|im_end|>`` models)."""

from typing import Any, Dict, List, Mapping, Optional, Tuple

from torchtune.data import Message, truncate
from torchtune.modules.transforms.tokenizers import HuggingFaceBaseTokenizer, ModelTokenizer
from torchtune.modules.transforms import Transform

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"
CHATML_ROLES = ("system", "user", "assistant")


class ChatMLTokenizer(ModelTokenizer, Transform):
    """Formats torchtune messages as ChatML and tokenizes them with a HF ``tokenizer.json``.

    Each message becomes ``<|im_start|>{role}\\n{content}<|im_end|>\\n``; no BOS is added.
    Message content is a list of items: ``{"type": "text", "content": str}`` is tokenized,
    ``{"type": "image", ...}`` emits exactly one ``image_token_id`` at its place, an id
    outside the text vocabulary that the fusion model replaces by image embeddings.

    Every token of a message gets ``message.masked`` (True = not trained), except the
    ``\\n`` after ``<|im_end|>``, which is always masked: the model learns to stop at
    ``<|im_end|>``.

    Args:
        tokenizer_json_path (str): path of ``tokenizer.json``.
        tokenizer_config_json_path (str): path of ``tokenizer_config.json`` (bos / eos / pad
            token names).
        image_token_id (int): id emitted for each image item. Default: 49152, the first id
            after SmolLM2's text vocabulary.
        max_seq_len (Optional[int]): truncate token lists to this length. Default: None.

    Raises:
        ValueError: if the tokenizer lacks ChatML special tokens or ``image_token_id`` is a
            text token.
    """

    def __init__(
        self,
        tokenizer_json_path: str,
        tokenizer_config_json_path: str,
        *,
        image_token_id: int = 49152,
        max_seq_len: Optional[int] = None,
    ):
        self.base_tokenizer = HuggingFaceBaseTokenizer(
            tokenizer_json_path, tokenizer_config_json_path=tokenizer_config_json_path
        )
        hf_tokenizer = self.base_tokenizer.tokenizer
        self.vocab_size = hf_tokenizer.get_vocab_size(with_added_tokens=True)
        self.special_tokens: Dict[str, int] = {
            token.content: token_id
            for token_id, token in hf_tokenizer.get_added_tokens_decoder().items()
            if token.special
        }
        for name in (IM_START, IM_END, ENDOFTEXT):
            if name not in self.special_tokens:
                raise ValueError(f"{tokenizer_json_path}: special token {name!r} is missing")
        if 0 <= image_token_id < self.vocab_size:
            raise ValueError(
                f"image_token_id {image_token_id} is a text token of {tokenizer_json_path} "
                f"(vocab size {self.vocab_size}); use an id >= {self.vocab_size}"
            )
        self.im_start_id = self.special_tokens[IM_START]
        self.eos_id = self.special_tokens[IM_END]  # end of turn
        self.endoftext_id = self.special_tokens[ENDOFTEXT]
        self.pad_id = self._pad_id_from_config()
        self.bos_id = None
        self.stop_tokens = [self.eos_id, self.endoftext_id]
        self.image_token_id = image_token_id
        self.max_seq_len = max_seq_len
        self._newline_ids = self.encode("\n")

    def _pad_id_from_config(self) -> int:
        pad_token = (self.base_tokenizer.config or {}).get("pad_token")
        if isinstance(pad_token, dict):
            pad_token = pad_token.get("content")
        pad_id = self.base_tokenizer.tokenizer.token_to_id(pad_token) if pad_token else None
        return self.endoftext_id if pad_id is None else pad_id

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> List[int]:
        """Tokenize plain text (special-token strings in it map to their ids).

        Args:
            text (str): text to encode.
            add_bos (bool): must be False: ChatML has no BOS token.
            add_eos (bool): append ``eos_id`` (``<|im_end|>``).

        Returns:
            List[int]: token ids.

        Raises:
            ValueError: if ``add_bos`` is True.
        """
        if add_bos:
            raise ValueError("ChatML has no BOS token; call encode with add_bos=False")
        token_ids = self.base_tokenizer.tokenizer.encode(text, add_special_tokens=False).ids
        return token_ids + [self.eos_id] if add_eos else token_ids

    def decode(self, token_ids: List[int], skip_special_tokens: bool = True) -> str:
        """Decode ids to text; ``image_token_id`` is always dropped.

        Args:
            token_ids (List[int]): ids to decode.
            skip_special_tokens (bool): drop special tokens such as ``<|im_end|>``.

        Returns:
            str: decoded text.
        """
        text_ids = [token_id for token_id in token_ids if token_id != self.image_token_id]
        return self.base_tokenizer.tokenizer.decode(text_ids, skip_special_tokens=skip_special_tokens)

    def _tokenize_content(self, message: Message, message_index: int) -> List[int]:
        token_ids = []
        for item_index, item in enumerate(message.content):
            if item["type"] == "text":
                token_ids += self.encode(item["content"])
            elif item["type"] == "image":
                token_ids.append(self.image_token_id)
            else:
                raise ValueError(
                    f"message {message_index} content item {item_index}: unsupported type "
                    f"{item['type']!r}; expected 'text' or 'image'"
                )
        return token_ids

    def tokenize_messages(
        self, messages: List[Message], *, add_end_tokens: bool = True
    ) -> Tuple[List[int], List[bool]]:
        """Format messages as ChatML and tokenize them.

        Args:
            messages (List[Message]): conversation; roles system, user or assistant.
            add_end_tokens (bool): close the last message with ``<|im_end|>\\n``. False for
                generation, so a final empty assistant message leaves the prompt ending
                with ``<|im_start|>assistant\\n``.

        Returns:
            Tuple[List[int], List[bool]]: token ids and the mask (True = not trained).

        Raises:
            ValueError: for a role outside ChatML's or an unknown content item type.
        """
        tokens: List[int] = []
        mask: List[bool] = []
        for index, message in enumerate(messages):
            if message.role not in CHATML_ROLES:
                raise ValueError(
                    f"message {index}: role {message.role!r} is not one of {CHATML_ROLES}"
                )
            message_tokens = (
                [self.im_start_id]
                + self.encode(f"{message.role}\n")
                + self._tokenize_content(message, index)
            )
            is_last = index == len(messages) - 1
            if add_end_tokens or not is_last:
                message_tokens.append(self.eos_id)
            tokens += message_tokens
            mask += [message.masked] * len(message_tokens)
            if add_end_tokens or not is_last:
                tokens += self._newline_ids
                mask += [True] * len(self._newline_ids)
        if self.max_seq_len is not None:
            tokens = truncate(tokens, self.max_seq_len)
            mask = truncate(mask, self.max_seq_len)
        return tokens, mask

    def __call__(self, sample: Mapping[str, Any], inference: bool = False) -> Mapping[str, Any]:
        """Replace ``sample["messages"]`` by ``sample["tokens"]`` and ``sample["mask"]``.

        Args:
            sample (Mapping[str, Any]): sample with a "messages" field (List[Message]).
            inference (bool): leave the last message open (no end tokens).

        Returns:
            Mapping[str, Any]: the sample with "tokens" and "mask".
        """
        messages = sample.pop("messages")
        sample["tokens"], sample["mask"] = self.tokenize_messages(
            messages, add_end_tokens=not inference
        )
        return sample
