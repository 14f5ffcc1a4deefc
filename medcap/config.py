"""A thin layer over ``torchtune.config``: nested ``_component_`` nodes are built inside-out.

torchtune 0.6.1 instantiates only the top node, so a model described as data (decoder, vision
tower and projector as sub-nodes) would reach its builder as config objects. Here every nested
node is built first and the builder receives built objects.
"""

import difflib
import re
from typing import Any, Iterable

import logging

from omegaconf import DictConfig, ListConfig, OmegaConf
from torchtune import config as tune_config

log = logging.getLogger(__name__)


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
    if node is None or (isinstance(node, DictConfig) and "_component_" in node and node._component_ is None):
        return None  # `tune run ... lr_scheduler=null` sets the node's _component_ to null: switched off
    nested = {key: _build(value) for key, value in node.items() if key != "_component_" and isinstance(value, (DictConfig, ListConfig))}
    plain = OmegaConf.create({key: value for key, value in node.items() if key not in nested})
    return tune_config.instantiate(plain, *args, **nested, **kwargs)


def check_config_keys(cfg: DictConfig, known: Iterable[str], recipe: str) -> None:
    """Refuse a top-level key that looks like a misspelled known key; warn about other unread keys.

    A key that other values interpolate (``llm_dir``, ``data_dir`` in ``${llm_dir}/...``) is used
    and allowed. An unread key close to a known one (``batchsize`` for ``batch_size``) is an error:
    the setting the user meant would silently keep its default. Any other unread key is logged
    as a warning (a variable whose uses were all overridden on the command line, say).

    Args:
        cfg (DictConfig): the launched config, overrides merged.
        known (Iterable[str]): the keys the recipe reads.
        recipe (str): the recipe's name, for the message.

    Raises:
        ValueError: naming the misspelled keys and the known keys they resemble.
    """
    known = set(known)
    referenced = set(re.findall(r"\$\{([A-Za-z_]\w*)", OmegaConf.to_yaml(cfg, resolve=False)))
    unread = [str(key) for key in cfg if key not in known and key not in referenced]
    misspelled = {key: difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.8) for key in unread}
    misspelled = {key: close[0] for key, close in misspelled.items() if close}
    if misspelled:
        hints = ", ".join(f"{key!r} (did you mean {close!r}?)" for key, close in misspelled.items())
        raise ValueError(
            f"{recipe}: unknown config key(s) {hints}; the recipe does not read them, so the setting "
            f"would be silently ignored. Known keys: {', '.join(sorted(known))}"
        )
    for key in unread:
        log.warning("%s: config key %r is not read by the recipe (nor used by another value); it has no effect", recipe, key)
