"""A thin layer over ``torchtune.config``: nested ``_component_`` nodes are built inside-out.

torchtune 0.6.1 instantiates only the top node, so a model described as data (decoder, vision
tower and projector as sub-nodes) would reach its builder as config objects. Here every nested
node is built first and the builder receives built objects.
"""

from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from torchtune import config as tune_config


def _build(node: Any) -> Any:
    if isinstance(node, DictConfig):
        if "_component_" in node:
            return instantiate(node)
        return {key: _build(value) for key, value in node.items()}
    if isinstance(node, ListConfig):
        return [_build(value) for value in node]
    return node


def instantiate(node: DictConfig, *args: Any, **kwargs: Any) -> Any:
    """Build ``node`` (a ``_component_`` config), building nested component nodes first.

    Args:
        node (DictConfig): the config node.
        *args (Any): positional arguments for the component.
        **kwargs (Any): keyword arguments overriding the node's.

    Returns:
        Any: the built object, or None for a None node.
    """
    if node is None:
        return None
    nested = {key: _build(value) for key, value in node.items() if key != "_component_" and isinstance(value, (DictConfig, ListConfig))}
    plain = OmegaConf.create({key: value for key, value in node.items() if key not in nested})
    return tune_config.instantiate(plain, *args, **nested, **kwargs)
