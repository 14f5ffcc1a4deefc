"""Prompt modes for evaluation: direct, describe-then-answer (medcap's two-turn VQA), few-shot.

Each builder returns torchtune messages ending with an empty assistant turn; tokenize them with
``add_end_tokens=False`` so the prompt ends with the assistant header.
"""

from typing import List, Optional, Sequence, Tuple

from torchtune.data import Message

from medcap.data.sharegpt import to_messages

DESCRIBE_INSTRUCTION = "Describe the image concisely."
MODES = ("direct", "describe_then_answer")


def direct_prompt(question: str, has_image: bool, few_shot: Sequence[Tuple[str, str]] = ()) -> List[Message]:
    """The question itself (image first, or at ``<image>``), after optional text exemplars.

    Args:
        question (str): the instruction or question.
        has_image (bool): whether an image goes with it.
        few_shot (Sequence[Tuple[str, str]]): (question, answer) text exemplars put before it as
            earlier turns (the BLIP-2 reproduction's one-shot exemplar is one pair).

    Returns:
        List[Message]: the prompt messages.
    """
    turns: List[Tuple[str, str]] = []
    for exemplar_question, exemplar_answer in few_shot:
        turns += [("user", exemplar_question), ("assistant", exemplar_answer)]
    messages = to_messages(turns, has_image=False) if turns else []
    messages += to_messages([("user", question), ("assistant", "")], has_image=has_image)
    return messages


def describe_then_answer_prompt(question: str, description: Optional[str], describe_instruction: str = DESCRIBE_INSTRUCTION) -> List[Message]:
    """medcap's zero-shot VQA: first ask for a description, then ask the question in a second turn.

    Args:
        question (str): the question.
        description (Optional[str]): the model's description of this image (first turn's answer);
            None builds the first turn's prompt.
        describe_instruction (str): the first turn's instruction.

    Returns:
        List[Message]: the prompt messages.
    """
    if description is None:
        return direct_prompt(describe_instruction, has_image=True)
    turns = [("user", describe_instruction), ("assistant", description), ("user", question), ("assistant", "")]
    return to_messages(turns, has_image=True)
