"""Captioning instructions: the human turn of caption / "text" records.

Train records get an instruction sampled with a seeded generator (seed 0, as medcap's original
converters); val / test records get the first instruction so evaluation prompts are fixed.
"""

import random
from typing import List

CAPTION_INSTRUCTIONS = (
    # brief
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Offer a succinct explanation of the image presented.",
    "Summarize the visual content of the image.",
    "Give a short and clear explanation of the image.",
    "Share a concise interpretation of the image provided.",
    "Present a compact description of the image's key features.",
    "Relay a brief, clear account of the image shown.",
    "Render a clear and concise summary of the image.",
    "Write a terse but informative summary of the image.",
    "Create a compact narrative representing the image.",
    "Caption the image in one or two sentences.",
    "State briefly what the image shows.",
    "Give a one-paragraph summary of this image.",
    "Write a short caption for this image.",
    # detailed
    "Describe the following image in detail.",
    "Provide a detailed description of the given image.",
    "Give an elaborate explanation of the image you see.",
    "Share a comprehensive rundown of the presented image.",
    "Offer a thorough analysis of the image.",
    "Explain the various aspects of the image before you.",
    "Clarify the contents of the displayed image with great detail.",
    "Characterize the image using a well-detailed description.",
    "Break down the elements of the image in a detailed manner.",
    "Walk through the important details of the image.",
    "Portray the image with a rich, descriptive narrative.",
    "Narrate the contents of the image with precision.",
    "Analyze the image in a comprehensive and detailed manner.",
    "Illustrate the image through a descriptive explanation.",
    "Examine the image closely and share its details.",
    "Write an exhaustive depiction of the given image.",
    # medical
    "Describe this medical image.",
    "Describe the findings in this medical image.",
    "Write a caption for this medical image.",
    "What does this medical image show?",
    "Summarize the findings visible in this scan.",
    "Write a short radiology report for this image.",
    "Describe the anatomy and any abnormality in this image.",
    "Which imaging modality and body region is this, and what does it show?",
    "Report the key observations in this radiograph.",
    "Describe the structures visible in this scan.",
    "Give a brief clinical description of this image.",
    "What are the notable findings in this image?",
    "Provide a figure caption for this medical image.",
    "Describe the regions of interest in this scan.",
    "Explain what a radiologist would note in this image.",
    "Write a concise report of this medical scan.",
)
assert len(CAPTION_INSTRUCTIONS) == 47


def caption_instructions(num_records: int, *, sample: bool, seed: int = 0) -> List[str]:
    """Instructions for ``num_records`` caption records.

    Args:
        num_records (int): how many records.
        sample (bool): sample each instruction with ``random.Random(seed).choice`` (train);
            otherwise every record gets the first instruction (val / test).
        seed (int): seed of the sampler.

    Returns:
        List[str]: one instruction per record.
    """
    if not sample:
        return [CAPTION_INSTRUCTIONS[0]] * num_records
    rng = random.Random(seed)
    return [rng.choice(CAPTION_INSTRUCTIONS) for _ in range(num_records)]
