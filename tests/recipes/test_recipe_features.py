"""Recipe features README_FINETUNE.md claims, each checked on the tiny CPU config.

Training: activation checkpointing, bf16, bitsandbytes AdamW8bit (also in backward), data-loader
workers, train augmentation, the gradient norm logged without clipping, the length-grouped sampler
without shuffling. Generation: the eval transform after an augmented run, blank images, few-shot
exemplars.
"""

import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from helpers import REPO_ROOT, load_script, logged_values
from omegaconf import OmegaConf
from safetensors.torch import load_file

TRAIN_CONFIG = REPO_ROOT / "recipes/configs/medcap/tiny_cpu.yaml"
GENERATE_CONFIG = REPO_ROOT / "recipes/configs/medcap/generate_tiny_cpu.yaml"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OPENAI_DATASET_MEAN / STD: the tiny config's image transform
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# one step at a constant lr (no warm-up step at lr 0), so a step always moves the weights
ONE_STEP = ("epochs=1", "max_steps_per_epoch=1", "lr_scheduler=null")


def _load_recipe(name: str):
    return load_script(f"recipes/{name}.py")


@pytest.fixture(scope="module")
def train_module():
    return _load_recipe("full_finetune_single_device")


@pytest.fixture(scope="module")
def generate_module():
    return _load_recipe("generate")


def _train_config(tiny_assets, output_dir: Path, *overrides: str):
    base = [f"assets_dir={tiny_assets['root']}", f"output_dir={output_dir}"]
    return OmegaConf.merge(OmegaConf.load(TRAIN_CONFIG), OmegaConf.from_dotlist(base + list(overrides)))


def _setup(train_module, tiny_assets, output_dir: Path, *overrides: str):
    cfg = _train_config(tiny_assets, output_dir, *overrides)
    recipe = train_module.FullFinetuneRecipeSingleDevice(cfg)
    recipe.setup(cfg)
    return recipe


def _train(train_module, tiny_assets, output_dir: Path, *overrides: str):
    recipe = _setup(train_module, tiny_assets, output_dir, *overrides)
    recipe.train()
    recipe.cleanup()
    return recipe


_logged = logged_values


def _first_step_gradients(recipe):
    """Loss and gradients of the first optimizer step, computed through the recipe's own model."""
    recipe._sampler.set_epoch(0)
    batch = next(iter(recipe._dataloader))
    images = batch["images"].to(recipe._dtype)
    hidden = recipe._model(batch["tokens"], images=images)
    loss_sum, num_tokens = recipe._loss_fn(hidden, batch["labels"], recipe._model.lm_head)
    (loss_sum / num_tokens).backward()
    named = dict(recipe._model.named_parameters())
    grads = {name: named[name].grad.detach().clone() for name in recipe._trainable_names}
    return loss_sum.item() / num_tokens, grads


# 1. activation checkpointing -------------------------------------------------------------------------


def test_activation_checkpointing_gives_the_same_loss_and_image_side_gradients(train_module, tiny_assets, tmp_path):
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

    plain = _setup(train_module, tiny_assets, tmp_path / "plain", *ONE_STEP)
    checkpointed = _setup(train_module, tiny_assets, tmp_path / "ac", *ONE_STEP, "enable_activation_checkpointing=True")
    # the knob really wraps the frozen decoder's layers (otherwise the comparison below holds trivially)
    assert all(isinstance(layer, CheckpointWrapper) for layer in checkpointed._model.decoder.layers)
    assert not any(isinstance(layer, CheckpointWrapper) for layer in plain._model.decoder.layers)

    plain_loss, plain_grads = _first_step_gradients(plain)
    ac_loss, ac_grads = _first_step_gradients(checkpointed)
    assert ac_loss == pytest.approx(plain_loss, rel=1e-6)
    assert sorted(ac_grads) == sorted(plain_grads) and any(n.startswith("image_encoder.vision_tower.") for n in ac_grads)
    for name, grad in plain_grads.items():
        assert grad.abs().sum() > 0, name  # every trainable tensor receives a gradient through the decoder
        torch.testing.assert_close(ac_grads[name], grad, rtol=1e-5, atol=1e-8, msg=name)

    # and through train(): the same logged loss and the same weights after one step at lr 1e-3
    _train(train_module, tiny_assets, tmp_path / "run_plain", *ONE_STEP)
    _train(train_module, tiny_assets, tmp_path / "run_ac", *ONE_STEP, "enable_activation_checkpointing=True")
    assert _logged(tmp_path / "run_ac") == pytest.approx(_logged(tmp_path / "run_plain"), rel=1e-6)
    assert len(_logged(tmp_path / "run_ac")) == 1
    plain_weights = load_file(tmp_path / "run_plain/epoch_0/image_encoder.safetensors")
    ac_weights = load_file(tmp_path / "run_ac/epoch_0/image_encoder.safetensors")
    for key, value in plain_weights.items():
        torch.testing.assert_close(ac_weights[key], value, rtol=1e-6, atol=1e-7, msg=key)


# 2. bf16 ----------------------------------------------------------------------------------------------


def test_bf16_trains_on_cpu_close_to_fp32_and_saves_bf16(train_module, tiny_assets, tmp_path):
    _train(train_module, tiny_assets, tmp_path / "fp32", *ONE_STEP)
    recipe = _train(train_module, tiny_assets, tmp_path / "bf16", *ONE_STEP, "dtype=bf16")
    (loss_fp32,), (loss_bf16,) = _logged(tmp_path / "fp32"), _logged(tmp_path / "bf16")
    assert math.isfinite(loss_bf16)
    assert loss_bf16 != loss_fp32  # the step really ran in bf16 (an fp32 run reproduces its loss exactly)
    # Bound: bf16 keeps 8 significant bits, a relative rounding of 2^-9 ~ 2e-3 per value. The loss
    # itself is computed in fp32 (the logits are upcast), so only the bf16 weights and activations of
    # the 2-layer decoder and the tower perturb it; 1e-2 (5 roundings' worth) bounds that
    # accumulation, while a wrong bf16 path (e.g. images not cast, NaN-prone overflow) is off by far more.
    assert loss_bf16 == pytest.approx(loss_fp32, rel=1e-2)

    # The recipe casts the whole model (trainable image side included) to the run's dtype, and
    # save_image_encoder writes the tensors as they are: the checkpoint is bf16.
    assert {p.dtype for p in recipe._model.parameters()} == {torch.bfloat16}
    saved = load_file(tmp_path / "bf16/epoch_0/image_encoder.safetensors")
    floating = {k: v for k, v in saved.items() if v.is_floating_point()}
    assert floating and {v.dtype for v in floating.values()} == {torch.bfloat16}
    # the bf16 step moved the weights (updates of lr=1e-3 are not all lost to bf16 rounding)
    initial = _setup(train_module, tiny_assets, tmp_path / "initial", *ONE_STEP, "dtype=bf16")._model.image_encoder.state_dict()
    moved = [k for k in floating if not torch.equal(floating[k], initial[k])]
    assert any(k.startswith("projector.") for k in moved) and any(k.startswith("vision_tower.") for k in moved)


# 3. bitsandbytes AdamW8bit ----------------------------------------------------------------------------

# every step sees the same batch: the 8 records in one batch, file order, one step per epoch
SAME_BATCH = ("batch_size=8", "shuffle=False", "epochs=4", "max_steps_per_epoch=null", "lr_scheduler=null",
              "clip_grad_norm=null")
ADAMW8BIT = "optimizer._component_=bitsandbytes.optim.AdamW8bit"


def test_adamw8bit_trains_like_adamw(train_module, tiny_assets, tmp_path):
    recipe = _train(train_module, tiny_assets, tmp_path / "bnb", *SAME_BATCH, ADAMW8BIT)
    _train(train_module, tiny_assets, tmp_path / "torch", *SAME_BATCH)
    losses, reference = _logged(tmp_path / "bnb"), _logged(tmp_path / "torch")
    assert len(losses) == 4
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses  # the same batch, fitted
    # 8-bit optimizer states (block-wise quantized moments) change the steps only slightly vs fp32 AdamW:
    # measured 4e-7 relative after 4 steps; a wrong lr or betas would move the loss by ~1e-3 (one step's gain)
    assert losses == pytest.approx(reference, rel=1e-5)
    assert losses[1:] != reference[1:]  # but it is not torch's AdamW in disguise
    import bitsandbytes

    assert isinstance(recipe._optimizer, bitsandbytes.optim.AdamW8bit)
    state_dtypes = {state["state1"].dtype for state in recipe._optimizer.state.values()}
    assert torch.uint8 in state_dtypes  # large tensors really keep 8-bit moments
    weights = load_file(tmp_path / "bnb/epoch_3/image_encoder.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_adamw8bit_in_backward_trains_and_leaves_the_decoder_without_state(train_module, tiny_assets, tmp_path):
    in_bwd = ("optimizer_in_bwd=True", "clip_grad_norm=null", "gradient_accumulation_steps=1")
    recipe = _train(train_module, tiny_assets, tmp_path / "in_bwd", *SAME_BATCH, ADAMW8BIT, *in_bwd)
    _train(train_module, tiny_assets, tmp_path / "normal", *SAME_BATCH, ADAMW8BIT)
    losses = _logged(tmp_path / "in_bwd")
    assert len(losses) == 4 and all(later < earlier for earlier, later in zip(losses, losses[1:])), losses
    assert losses == pytest.approx(_logged(tmp_path / "normal"), rel=1e-5)  # a step in backward = a normal step
    weights = load_file(tmp_path / "in_bwd/epoch_3/image_encoder.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())

    # one optimizer per trainable (image-side) parameter; none for the frozen decoder
    named = dict(recipe._model.named_parameters())
    optim_map = recipe._optim_wrapper.optim_map
    assert set(optim_map) == set(recipe._trainable_names)
    assert all(name.startswith("image_encoder.") for name in optim_map)
    decoder_ids = {id(p) for p in recipe._model.decoder.parameters()}
    for name, optimizer in optim_map.items():
        params = [p for group in optimizer.param_groups for p in group["params"]]
        assert len(params) == 1 and params[0] is named[name]
        assert set(map(id, optimizer.state)) == {id(named[name])}  # it stepped and holds state for its own tensor
    assert not decoder_ids & {id(p) for opt in optim_map.values() for group in opt.param_groups for p in group["params"]}
    saved = torch.load(tmp_path / "in_bwd/epoch_3/recipe_state.pt", weights_only=True)["optimizer"]
    assert set(saved) == set(recipe._trainable_names)
    # the decoder accumulated no gradients and kept its weights
    assert all(p.grad is None and not p.requires_grad for p in recipe._model.decoder.parameters())
    from torchtune.models.convert_weights import meta_to_tune

    original = meta_to_tune(torch.load(tiny_assets["decoder"], weights_only=True))
    for key, value in recipe._model.decoder.state_dict().items():
        if key in original:
            assert torch.equal(value, original[key]), key


# 4. data-loader workers -------------------------------------------------------------------------------


def test_num_workers_gives_the_same_losses(train_module, tiny_assets, tmp_path):
    # the default tiny run: shuffled, 2 epochs of 2 steps
    _train(train_module, tiny_assets, tmp_path / "main", "num_workers=0")
    _train(train_module, tiny_assets, tmp_path / "workers", "num_workers=2")
    main, workers = _logged(tmp_path / "main"), _logged(tmp_path / "workers")
    assert len(main) == 4 and workers == main
    for epoch in (0, 1):
        reference = load_file(tmp_path / f"main/epoch_{epoch}/image_encoder.safetensors")
        loaded = load_file(tmp_path / f"workers/epoch_{epoch}/image_encoder.safetensors")
        assert all(torch.equal(loaded[k], v) for k, v in reference.items())


# 5. train augmentation, and the eval transform in generation --------------------------------------------


def test_train_augmentation_changes_the_pixels_of_a_record(train_module, tiny_assets, tmp_path):
    augmented = _setup(train_module, tiny_assets, tmp_path / "aug", "model_transform.image_transform.train_augmentation=True")
    plain = _setup(train_module, tiny_assets, tmp_path / "plain")
    first, second = augmented._dataset[0]["image"], augmented._dataset[0]["image"]  # two epochs of record 0
    assert first.shape == second.shape == (3, 32, 32)
    assert not torch.equal(first, second)
    assert torch.equal(plain._dataset[0]["image"], plain._dataset[0]["image"])
    assert not torch.equal(first, plain._dataset[0]["image"])
    # and the model sees it: one step's loss differs
    _train(train_module, tiny_assets, tmp_path / "run_aug", *ONE_STEP, "model_transform.image_transform.train_augmentation=True")
    _train(train_module, tiny_assets, tmp_path / "run_plain", *ONE_STEP)
    assert _logged(tmp_path / "run_aug") != _logged(tmp_path / "run_plain")


def _generation(generate_module, tiny_assets, run_dir, output_dir, *overrides, **settings):
    cfg = OmegaConf.merge(OmegaConf.load(GENERATE_CONFIG), OmegaConf.from_dotlist(
        [f"run_dir={run_dir}", f"output_dir={output_dir}", f"dataset.source={tiny_assets['data']}", "checkpoints=last",
         "max_new_tokens=3", *overrides]))
    for key, value in settings.items():
        cfg[key] = value
    recipe = generate_module.GenerationRecipe(cfg)
    recipe.setup(cfg)
    return recipe


def _recording_generate(generate_module, monkeypatch):
    """Record (prompts, images) of every call to the recipe module's ``generate``."""
    calls = []
    real_generate = generate_module.generate

    def recording(model, prompts, images, **kwargs):
        calls.append(([list(p) for p in prompts], None if images is None else images.detach().clone()))
        return real_generate(model, prompts, images, **kwargs)

    monkeypatch.setattr(generate_module, "generate", recording)
    return calls


@pytest.fixture(scope="module")
def augmented_run(train_module, tiny_assets, tmp_path_factory):
    """A tiny run trained with augmentation (2 steps at lr 1e-3), its config saved for generation."""
    output_dir = tmp_path_factory.mktemp("augmented_run")
    _train(train_module, tiny_assets, output_dir, "epochs=1", "max_steps_per_epoch=2", "lr_scheduler=null",
           "model_transform.image_transform.train_augmentation=True")
    return output_dir


def test_generation_uses_the_eval_transform_after_an_augmented_run(generate_module, tiny_assets, augmented_run, tmp_path, monkeypatch):
    from medcap.data import open_clip_image_transform

    assert OmegaConf.load(augmented_run / "config.yaml").model_transform.image_transform.train_augmentation is True
    calls = _recording_generate(generate_module, monkeypatch)
    outputs = []
    for seed in (0, 1):  # another seed: an augmenting transform would draw other crops
        recipe = _generation(generate_module, tiny_assets, augmented_run, tmp_path / f"seed_{seed}", f"seed={seed}")
        recipe.run()
        outputs.append(pd.read_csv(tmp_path / f"seed_{seed}/epoch_0/predictions.csv", keep_default_na=False))
    assert len(calls) == 2  # 8 questions in one batch per run
    (_, images_0), (_, images_1) = calls
    assert torch.equal(images_0, images_1)
    dataset = recipe._build_dataset(recipe._cfg)
    eval_transform = open_clip_image_transform(image_size=32)  # the eval preprocessing, built independently
    expected = torch.stack([eval_transform(dataset.load_image(i)) for i in range(len(dataset))])
    torch.testing.assert_close(images_0, expected, rtol=0, atol=0)
    assert outputs[0]["prediction"].tolist() == outputs[1]["prediction"].tolist()
    assert len(outputs[0]) == 8


# 6. blank images --------------------------------------------------------------------------------------


def test_blank_images_feed_uniform_gray_for_the_same_questions(generate_module, tiny_assets, augmented_run, tmp_path, monkeypatch):
    calls = _recording_generate(generate_module, monkeypatch)
    _generation(generate_module, tiny_assets, augmented_run, tmp_path / "images").run()
    _generation(generate_module, tiny_assets, augmented_run, tmp_path / "blank", "blank_images=True").run()
    (_, real), (_, blank) = calls
    assert blank.shape == real.shape == (8, 3, 32, 32)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    pixels = blank * std + mean  # back to [0, 1]
    torch.testing.assert_close(pixels, torch.full_like(pixels, 128 / 255), rtol=0, atol=1e-6)  # RGB (128, 128, 128)
    assert (real * std + mean).flatten(1).std(dim=1).min() > 0.01  # the control: real images are not uniform
    columns = ["id", "image", "question", "reference", "answer_type"]
    with_images = pd.read_csv(tmp_path / "images/epoch_0/predictions.csv", keep_default_na=False)
    blanked = pd.read_csv(tmp_path / "blank/epoch_0/predictions.csv", keep_default_na=False)
    assert len(blanked) == 8
    pd.testing.assert_frame_equal(blanked[columns], with_images[columns])


# 7. few-shot exemplars --------------------------------------------------------------------------------


def test_few_shot_exemplars_come_before_the_question(generate_module, tiny_assets, augmented_run, tmp_path, monkeypatch):
    exemplar = {"question": "Is the border dark?", "answer": "maybe so"}
    calls = _recording_generate(generate_module, monkeypatch)
    shot = _generation(generate_module, tiny_assets, augmented_run, tmp_path / "shot", few_shot=[exemplar])
    shot.run()
    _generation(generate_module, tiny_assets, augmented_run, tmp_path / "plain").run()
    (shot_prompts, _), (plain_prompts, _) = calls
    tokenizer = shot._tokenizer
    image_id = shot._model.image_token_id

    def decode(tokens):
        return tokenizer.decode(tokens, truncate_at_eos=False, skip_special_tokens=True)

    assert len(shot_prompts) == len(plain_prompts) == 8
    for prompt in shot_prompts:
        text = decode(prompt)
        positions = [text.index(exemplar["question"]), text.index(exemplar["answer"]), text.index("Is there a spot?")]
        assert positions == sorted(positions), text
        # the image goes with the real question, after the (text-only) exemplar turn
        first_image = prompt.index(image_id)
        before, after = decode(prompt[:first_image]), decode(prompt[first_image:])
        assert exemplar["question"] in before and exemplar["answer"] in before and "Is there a spot?" in after
        assert prompt.count(image_id) == shot._model.num_image_tokens
    for prompt in plain_prompts:
        text = decode(prompt)
        assert "Is there a spot?" in text
        assert exemplar["question"] not in text and exemplar["answer"] not in text
    assert len(shot_prompts[0]) > len(plain_prompts[0])


# 8. the gradient norm without clipping ----------------------------------------------------------------


def test_grad_norm_is_logged_without_clipping(train_module, tiny_assets, tmp_path):
    common = ("epochs=1", "max_steps_per_epoch=2", "lr_scheduler=null")
    _train(train_module, tiny_assets, tmp_path / "no_clip", *common, "clip_grad_norm=null")
    _train(train_module, tiny_assets, tmp_path / "huge", *common, "clip_grad_norm=1e9")
    no_clip, huge = _logged(tmp_path / "no_clip", "grad_norm"), _logged(tmp_path / "huge", "grad_norm")
    assert len(no_clip) == 2 and no_clip == pytest.approx(huge, rel=1e-6)
    assert _logged(tmp_path / "no_clip") == pytest.approx(_logged(tmp_path / "huge"), rel=1e-6)
    # the logged value is the norm of the first step's mean-loss gradient, computed independently
    recipe = _setup(train_module, tiny_assets, tmp_path / "reference", *common)
    _, grads = _first_step_gradients(recipe)
    norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads.values()))
    assert no_clip[0] == pytest.approx(norm, rel=1e-5)


# 9. the length-grouped sampler honours shuffle ---------------------------------------------------------


def _orders(sampler, epochs=(0, 1)):
    orders = []
    for epoch in epochs:
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    return orders


def _loader_batches(order, lengths, batch_size=4):
    """The lengths of each batch a DataLoader cuts from the sampler's order."""
    return [[lengths[i] for i in order[start:start + batch_size]] for start in range(0, len(order), batch_size)]


def _padding(order, lengths, batch_size=4):
    return sum(len(batch) * max(batch) - sum(batch) for batch in _loader_batches(order, lengths, batch_size))


def test_length_grouped_sampler_honours_shuffle():
    from medcap.data import LengthGroupedSampler, build_sampler

    generator = torch.Generator().manual_seed(0)
    n = 148  # several mega-batches of 64, a multiple of the batch size (see the test below otherwise)
    dataset = SimpleNamespace(lengths=torch.randint(5, 80, (n,), generator=generator).tolist())
    fixed = {seed: build_sampler(dataset, 4, shuffle=False, group_by_length=True, seed=seed) for seed in (0, 1)}
    assert isinstance(fixed[0], LengthGroupedSampler)
    epoch_0, epoch_1 = _orders(fixed[0])
    assert epoch_0 == epoch_1 == _orders(fixed[1])[0] == _orders(fixed[1])[1]
    assert sorted(epoch_0) == list(range(n))
    # documented order: file order cut into mega-batches (16 batches), each sorted longest first
    mega = 4 * 16
    expected = [i for start in range(0, n, mega)
                for i in sorted(range(start, min(start + mega, n)), key=lambda i: -dataset.lengths[i])]
    assert epoch_0 == expected

    shuffled = build_sampler(dataset, 4, shuffle=True, group_by_length=True, seed=0)
    first, second = _orders(shuffled)
    assert first != second and first != epoch_0
    assert sorted(first) == sorted(second) == list(range(n))
    # still grouped: every loader batch is a slice of a sorted mega-batch, and padding is far below random's
    assert all(batch == sorted(batch, reverse=True) for batch in _loader_batches(first, dataset.lengths))
    random_order = torch.randperm(n, generator=generator).tolist()
    assert _padding(first, dataset.lengths) < _padding(random_order, dataset.lengths) / 3


def test_length_grouped_batches_stay_grouped_when_the_size_is_not_a_multiple_of_the_batch():
    from medcap.data import build_sampler

    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 80, (150,), generator=generator).tolist()  # 150 = 37 batches of 4 + one of 2
    order = list(build_sampler(SimpleNamespace(lengths=lengths), 4, shuffle=True, group_by_length=True, seed=0))
    assert sorted(order) == list(range(150))
    batches = _loader_batches(order, lengths)
    assert all(batch == sorted(batch, reverse=True) for batch in batches), batches


def test_recipe_passes_shuffle_false_to_the_length_grouped_sampler(train_module, tiny_assets, tmp_path):
    from medcap.data import LengthGroupedSampler

    recipe = _setup(train_module, tiny_assets, tmp_path, "shuffle=False", "group_by_length=True")
    assert isinstance(recipe._sampler, LengthGroupedSampler) and recipe._sampler.shuffle is False
    epoch_0, epoch_1 = _orders(recipe._sampler)
    assert epoch_0 == epoch_1 and sorted(epoch_0) == list(range(8))
    shuffled = _setup(train_module, tiny_assets, tmp_path / "shuffled", "shuffle=True", "group_by_length=True")
    assert _orders(shuffled._sampler)[0] != _orders(shuffled._sampler)[1]


def test_lr_scheduler_null_on_the_command_line_switches_it_off(train_module, tiny_assets, tmp_path):
    """`tune run ... lr_scheduler=null` reaches the recipe as `lr_scheduler._component_: null`."""
    recipe = _setup(train_module, tiny_assets, tmp_path, "lr_scheduler._component_=null")
    assert recipe._lr_scheduler is None
    assert recipe._optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)  # the configured rate, no warm-up


def test_optimizer_groups_give_the_tower_and_the_projector_their_own_settings(train_module, tiny_assets, tmp_path):
    """ms-swift's --vit_lr / --aligner_lr: per-part rates and weight decay, scheduled together."""
    recipe = _setup(train_module, tiny_assets, tmp_path, "optimizer_groups.vision_tower.lr=1e-4",
                    "optimizer_groups.vision_tower.weight_decay=0.05", "lr_scheduler=null")
    groups = {group["name"]: group for group in recipe._optimizer.param_groups}
    assert set(groups) == {"vision_tower", "projector"}
    assert (groups["vision_tower"]["lr"], groups["vision_tower"]["weight_decay"]) == (1e-4, 0.05)
    assert (groups["projector"]["lr"], groups["projector"]["weight_decay"]) == (1e-3, 0.0)  # the optimizer node's
    tower = {id(p) for p in recipe._model.image_encoder.vision_tower.parameters()}
    assert all(id(p) in tower for p in groups["vision_tower"]["params"])
    assert not any(id(p) in tower for p in groups["projector"]["params"])
    # a tower rate of 0 freezes the tower's weights while the projector trains
    frozen = _train(train_module, tiny_assets, tmp_path / "zero", "optimizer_groups.vision_tower.lr=0.0",
                    "epochs=1", "max_steps_per_epoch=2", "lr_scheduler=null")
    initial = load_file(tiny_assets["vision"] / "open_clip_model.safetensors")
    trained = load_file(tmp_path / "zero/epoch_0/image_encoder.safetensors")
    assert all(torch.equal(trained[f"vision_tower.{k}"], v) for k, v in initial.items())
    projector = {k: v for k, v in frozen._model.image_encoder.projector.state_dict().items()}
    assert _logged(tmp_path / "zero", "lr_projector") == [1e-3, 1e-3] and projector


def test_optimizer_groups_naming_a_frozen_or_unknown_part_are_errors(train_module, tiny_assets, tmp_path):
    with pytest.raises(ValueError, match=r"unknown part\(s\) \['tower'\]"):
        _setup(train_module, tiny_assets, tmp_path, "optimizer_groups.tower.lr=1e-4")
    with pytest.raises(ValueError, match=r"names \['vision_tower'\], which has no trainable parameter"):
        _setup(train_module, tiny_assets, tmp_path, "optimizer_groups.vision_tower.lr=1e-4", "trainable=projector")
