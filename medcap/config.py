"""A thin layer over ``torchtune.config``: nested ``_component_`` nodes are built inside-out.

torchtune 0.6.1 instantiates only the top node, so a model described as data (decoder, vision
tower and projector as sub-nodes) would reach its builder as config objects. Here every nested
node is built first and the builder receives built objects.
"""

import difflib
import re
from typing import Any, Iterable

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


def check_config_keys(cfg: DictConfig, known: Iterable[str], recipe: str) -> None:
    """Refuse top-level keys the recipe does not read, so a typo is not silently ignored.

    A key that other values interpolate (``llm_dir``, ``data_dir`` in ``${llm_dir}/...``) is used
    and allowed.

    Args:
        cfg (DictConfig): the launched config, overrides merged.
        known (Iterable[str]): the keys the recipe reads.
        recipe (str): the recipe's name, for the message.

    Raises:
        ValueError: naming the unknown keys and the nearest known ones.
    """
    known = set(known)
    referenced = set(re.findall(r"\$\{([A-Za-z_]\w*)", OmegaConf.to_yaml(cfg, resolve=False)))
    unknown = [key for key in cfg if key not in known and key not in referenced]
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), sorted(known), n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ValueError(
        f"{recipe}: unknown config key(s) {', '.join(hints)}; a key the recipe does not read would be "
        f"silently ignored. Known keys: {', '.join(sorted(known))}"
    )
