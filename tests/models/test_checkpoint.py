"""Image-encoder checkpoints: round trip, medcap's original format, clear errors, atomic writes."""

import pickle
from pathlib import Path

import pytest
import torch
from helpers import build_tiny_model

from medcap.checkpoint import atomic_write, load_image_encoder_weights, save_image_encoder


def test_round_trip(tiny_assets, tmp_path):
    source = build_tiny_model(tiny_assets, seed=1)
    target = build_tiny_model(tiny_assets, seed=2)
    path = save_image_encoder(source.image_encoder, tmp_path / "epoch_0")
    assert path.name == "image_encoder.safetensors"
    load_image_encoder_weights(tmp_path / "epoch_0", target.image_encoder)
    for (name, a), (_, b) in zip(source.image_encoder.state_dict().items(), target.image_encoder.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_medcap_original_meta_model_checkpoint(tiny_assets, tmp_path):
    source = build_tiny_model(tiny_assets, seed=3)
    projector = source.image_encoder.projector
    legacy = {
        "visual": source.image_encoder.vision_tower.visual.state_dict(),
        "projector": {"0.weight": projector.fc1.weight, "0.bias": projector.fc1.bias,
                      "2.weight": projector.fc2.weight, "2.bias": projector.fc2.bias},
    }
    torch.save(legacy, tmp_path / "meta_model_0.pt")
    target = build_tiny_model(tiny_assets, seed=4)
    load_image_encoder_weights(tmp_path / "meta_model_0.pt", target.image_encoder)
    torch.testing.assert_close(target.image_encoder.projector.fc2.weight, projector.fc2.weight, rtol=0, atol=0)
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(target.image_encoder.eval()(images), source.image_encoder.eval()(images), rtol=0, atol=0)


def test_wrong_shape_names_the_keys(tiny_assets, tmp_path):
    save_image_encoder(build_tiny_model(tiny_assets, num_tokens=4).image_encoder, tmp_path)
    other = build_tiny_model(tiny_assets, num_tokens=8)
    with pytest.raises(ValueError, match=r"shape mismatches, e.g. \['projector.fc2.weight: checkpoint \(256, 64\) vs model \(512, 64\)"):
        load_image_encoder_weights(tmp_path, other.image_encoder)


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_is_refused(tiny_assets, tmp_path, capsys):
    path = tmp_path / "meta_model_0.pt"
    with open(path, "wb") as f:
        pickle.dump({"visual": _Payload(), "projector": {}}, f)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_image_encoder_weights(path, build_tiny_model(tiny_assets).image_encoder)
    assert "must never run" not in capsys.readouterr().out


def test_missing_checkpoint(tiny_assets, tmp_path):
    with pytest.raises(FileNotFoundError, match="vision checkpoint not found"):
        load_image_encoder_weights(tmp_path / "nowhere", build_tiny_model(tiny_assets).image_encoder)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    def failing_writer(temp: str) -> None:
        Path(temp).write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "file.bin", failing_writer)
    assert list(tmp_path.iterdir()) == []
