"""medcap: teach a frozen LLM to see medical images (trainable vision tower + projector)."""

__version__ = "0.1.0"
