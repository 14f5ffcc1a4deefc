"""Vision towers: any open_clip or timm image tower, returning a sequence of image features.

Two output modes:

* ``pooled``: the tower's pooled, projected embedding, one vector per image (medcap's original:
  BiomedCLIP's CLS token -> 512-d linear projection). Shape ``[b, 1, d_v]``.
* ``patch``: every patch token of the trunk (LLaVA-style). For a ViT the prefix (CLS/register)
  tokens are dropped; for a CNN the final feature map is flattened to ``h * w`` tokens.
  Shape ``[b, n_patches, d_v]``.

Towers are named as open_clip names them:

* ``local-dir:/path`` or ``hf-hub:org/repo``: a directory with ``open_clip_config.json`` and weights
  (BiomedCLIP's layout). Only the vision tower is built; the text tower (and ``transformers``) are
  never touched. ``hf-hub:`` resolves through the local Hugging Face cache first.
* ``timm:<name>``: a timm trunk wrapped by open_clip's ``TimmModel`` (random init unless
  ``pretrained`` is a local weights file).
* any other open_clip model name, e.g. ``ViT-B-16`` (its ``.visual`` is used).
"""

import json
import os
from pathlib import Path
from typing import Dict, Optional, Tuple

import open_clip
import torch
from open_clip.model import _build_vision_tower
from open_clip.timm_model import TimmModel
from safetensors.torch import load_file
from torch import nn

from medcap.checkpoint.io import check_state_dict_fits

_WEIGHT_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_model.bin",
    "pytorch_model.bin",
)
_OUTPUT_MODES = ("pooled", "patch")


class VisionTower(nn.Module):
    """An open_clip image tower that returns a sequence of features per image.

    Args:
        visual (nn.Module): an open_clip vision module (``TimmModel`` or ``VisionTransformer``).
        output (str): ``"pooled"`` or ``"patch"``.
        image_size (int): side of the square input image the tower expects.

    Attributes:
        out_dim (int): feature size ``d_v`` of each output token.
        num_tokens (int): tokens per image (1 for ``pooled``).
    """

    def __init__(self, visual: nn.Module, output: str = "pooled", image_size: int = 224):
        super().__init__()
        if output not in _OUTPUT_MODES:
            raise ValueError(f"output must be one of {_OUTPUT_MODES}, got {output!r}")
        if output == "patch" and not isinstance(visual, TimmModel) and not hasattr(visual, "output_tokens"):
            raise ValueError(f"output='patch' is not supported for {type(visual).__name__}")
        self.visual = visual
        self.output = output
        self.image_size = image_size
        with torch.no_grad():
            was_training = visual.training
            visual.eval()
            probe = self.forward(torch.zeros(1, 3, image_size, image_size))  # [1, n, d_v]
            visual.train(was_training)
        self.num_tokens, self.out_dim = probe.shape[1], probe.shape[2]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Encode images.

        Args:
            images (torch.Tensor): ``[b, 3, h, w]`` normalised pixels.

        Returns:
            torch.Tensor: ``[b, n, d_v]`` features.
        """
        if self.output == "pooled":
            return self.visual(images).unsqueeze(1)  # [b, 1, d_v]
        if isinstance(self.visual, TimmModel):
            features = self.visual.trunk.forward_features(images)
            if features.ndim == 4:  # CNN feature map [b, c, h, w] -> [b, h*w, c]
                return features.flatten(2).transpose(1, 2)
            prefix = getattr(self.visual.trunk, "num_prefix_tokens", 0)
            return features[:, prefix:]  # [b, n_patches, d_v]
        self.visual.output_tokens = True  # open_clip VisionTransformer
        _, tokens = self.visual(images)
        return tokens  # [b, n_patches, d_v]

    def blocks(self) -> nn.ModuleList:
        """The tower's sequence of blocks (transformer blocks or CNN stages), input to output."""
        trunk = getattr(self.visual, "trunk", self.visual)
        for name in ("blocks", "stages", "layers"):
            found = getattr(trunk, name, None)
            if isinstance(found, (nn.ModuleList, nn.Sequential)):
                return found
        if hasattr(trunk, "layer4"):  # torchvision/timm ResNet
            return nn.ModuleList([trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4])
        transformer = getattr(trunk, "transformer", None)  # open_clip VisionTransformer
        if transformer is not None and hasattr(transformer, "resblocks"):
            return transformer.resblocks
        raise ValueError(f"cannot find the blocks of vision tower {type(trunk).__name__}")


def open_clip_vision_tower(
    model_name: str,
    output: str = "pooled",
    image_size: int = 224,
    embed_dim: int = 512,
    pool: str = "",
    proj: str = "linear",
    pretrained: Optional[str] = None,
) -> VisionTower:
    """Build an open_clip/timm vision tower by name.

    Args:
        model_name (str): ``local-dir:PATH``, ``hf-hub:ORG/REPO``, ``timm:NAME`` or an open_clip
            model name (see the module docstring).
        output (str): ``"pooled"`` or ``"patch"``.
        image_size (int): input image side; for ``local-dir``/``hf-hub`` the config's value wins.
        embed_dim (int): projection size for ``timm:`` towers (``proj="linear"``).
        pool (str): timm pooling for ``timm:`` towers ("" = model default, "avg", "max", "token").
        proj (str): projection head for ``timm:`` towers ("linear", "mlp" or "none").
        pretrained (Optional[str]): weights: a local file for ``timm:`` towers, an open_clip
            pretrained tag or file for open_clip names. Ignored for directories (they carry weights).

    Returns:
        VisionTower: the tower.
    """
    if model_name.startswith(("local-dir:", "hf-hub:")):
        model_dir = _resolve_model_dir(model_name)
        visual, image_size = _vision_tower_from_dir(model_dir)
    elif model_name.startswith("timm:"):
        visual = TimmModel(model_name[len("timm:"):], embed_dim=embed_dim, image_size=image_size, pool=pool, proj=proj)
        if pretrained:
            _load_visual_state_dict(visual, Path(pretrained))
    else:
        visual = open_clip.create_model(model_name, pretrained=pretrained, force_image_size=image_size).visual
    return VisionTower(visual, output=output, image_size=image_size)


def _resolve_model_dir(model_name: str) -> Path:
    """Return the local directory for ``local-dir:`` or ``hf-hub:`` names."""
    if model_name.startswith("local-dir:"):
        model_dir = Path(model_name[len("local-dir:"):]).expanduser()
        if not (model_dir / "open_clip_config.json").is_file():
            raise FileNotFoundError(f"{model_dir}: no open_clip_config.json (expected a local-dir: open_clip model)")
        return model_dir
    from huggingface_hub import snapshot_download

    repo_id = model_name[len("hf-hub:"):]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=["open_clip_config.json", *_WEIGHT_FILES]))
    except Exception as error:  # offline with an empty cache, or no such repository
        raise FileNotFoundError(
            f"cannot obtain {model_name} ({error}). Offline, download it once elsewhere and pass "
            f"local-dir:/path/to/dir (a folder with open_clip_config.json and the weights)."
        ) from error


def _vision_tower_from_dir(model_dir: Path) -> Tuple[nn.Module, int]:
    """Build only the vision tower described by ``open_clip_config.json`` and load its weights."""
    config_path = model_dir / "open_clip_config.json"
    with open(config_path) as f:
        config = json.load(f)
    model_cfg = config.get("model_cfg", config)
    if "vision_cfg" not in model_cfg or "embed_dim" not in model_cfg:
        raise ValueError(f"{config_path}: field 'model_cfg' needs 'embed_dim' and 'vision_cfg'")
    vision_cfg = dict(model_cfg["vision_cfg"])
    vision_cfg["timm_model_pretrained"] = False  # the directory's weights are loaded below; no hub access
    visual = _build_vision_tower(model_cfg["embed_dim"], vision_cfg, quick_gelu=model_cfg.get("quick_gelu", False))
    weights = next((model_dir / name for name in _WEIGHT_FILES if (model_dir / name).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{model_dir}: no weights file (looked for {', '.join(_WEIGHT_FILES)})")
    _load_visual_state_dict(visual, weights)
    image_size = vision_cfg.get("image_size", 224)
    return visual, image_size if isinstance(image_size, int) else image_size[0]


def _load_visual_state_dict(visual: nn.Module, path: Path) -> None:
    """Load a full CLIP (``visual.*`` keys) or vision-only state dict into ``visual``."""
    if path.suffix == ".safetensors":
        state_dict = load_file(os.fspath(path))
    else:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    state_dict: Dict[str, torch.Tensor] = state_dict.get("state_dict", state_dict)
    if any(key.startswith("visual.") for key in state_dict):
        state_dict = {k[len("visual."):]: v for k, v in state_dict.items() if k.startswith("visual.")}
    check_state_dict_fits(state_dict, visual.state_dict(), path, what="the configured vision tower")
    visual.load_state_dict(state_dict)
