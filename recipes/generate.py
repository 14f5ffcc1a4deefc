"""Generate with one or every checkpoint of a run, score, and report.

Launch (from the repository root)::

    PYTHONPATH=. tune run recipes/generate.py --config recipes/configs/medcap/generate_tiny_cpu.yaml
    python recipes/generate.py --config recipes/configs/medcap/generate_tiny_cpu.yaml checkpoints=all
    # a quick look at one image: base (untrained image side) and tuned answers side by side
    python recipes/generate.py --config ... image=path/to/scan.png prompt="Is there a lesion?"

Per checkpoint ``{output_dir}/{checkpoint}/predictions.csv`` (image, question, reference,
prediction, answer_type, ...) and ``metrics.json``; across checkpoints ``metrics_by_epoch.csv``
and ``.json``, a plot and a self-contained ``report.html``.
"""

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

if __package__ in (None, ""):  # `python recipes/x.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd
import PIL.Image
import torch
from omegaconf import DictConfig, OmegaConf
from torchtune import config, training, utils
from tqdm import tqdm

from medcap import config as medcap_config
from medcap.checkpoint import IMAGE_ENCODER_FILE, atomic_write, load_image_encoder_weights
from medcap.data import MedcapTransform, RecordError, load_image, parse_record
from medcap.data.images import ImageLoadError
from medcap.data.sharegpt import load_records
from medcap.generation import answer_form_rates, describe_then_answer_prompt, direct_prompt, generate, score_predictions
from medcap.generation.report import plot_metrics_by_epoch, write_html_report, write_metrics_table

log = logging.getLogger("medcap")
BASE = "base"


class GenerationRecipe:
    """Batched greedy/sampled generation over a ShareGPT test file for several checkpoints.

    Config: ``model``, ``checkpointer``, ``tokenizer``, ``image_transform`` as in training;
    ``run_dir`` (a training ``output_dir``) and ``checkpoints`` (``all``: ``base`` + every
    ``epoch_*``; ``last``; ``base``; or a list of names / paths); ``dataset.source`` (+ ``image_dir``,
    ``skip_bad_records``) or ``image`` + ``prompt``; ``mode`` (``direct`` | ``describe_then_answer``),
    ``max_new_tokens_by_answer_type`` (e.g. ``{CLOSED: 8, OPEN: 16}``: short answers stop early),
    ``few_shot`` (list of ``{question, answer}``); ``batch_size``, ``max_new_tokens``,
    ``temperature``, ``top_k``, ``seed``; ``max_samples``; ``meteor``; ``output_dir``;
    ``train_source`` (optional training JSON: adds the share of answers in a trained form);
    ``blank_images`` (feed uniform gray images instead: shows whether answers use the image).
    """

    def __init__(self, cfg: DictConfig) -> None:
        cfg = _with_training_config(cfg)
        self._device = utils.get_device(cfg.device)
        self._dtype = training.get_dtype(cfg.dtype, device=self._device)
        self._cfg = cfg
        training.set_seed(cfg.get("seed", 0))

    def setup(self, cfg: DictConfig) -> None:
        """Build the model with its frozen decoder weights, the tokenizer and the inputs."""
        cfg = self._cfg
        with training.set_default_dtype(self._dtype), self._device:
            self._model = medcap_config.instantiate(cfg.model)
        decoder_state = config.instantiate(cfg.checkpointer).load_checkpoint()[training.MODEL_KEY]
        self._model.decoder.load_state_dict(decoder_state)
        self._model.to(device=self._device, dtype=self._dtype).eval()
        self._base_state = {k: v.clone() for k, v in self._model.image_encoder.state_dict().items()}
        self._tokenizer = medcap_config.instantiate(cfg.tokenizer)
        self._transform = MedcapTransform(
            self._tokenizer, self._model.num_image_tokens, cfg.max_seq_len, medcap_config.instantiate(cfg.image_transform)
        )
        self._checkpoints = self._resolve_checkpoints(cfg.get("checkpoints", "all"), cfg.get("run_dir", None))
        self._output_dir = Path(cfg.output_dir)
        train_source = cfg.get("train_source", None)
        self._train_records = load_records(Path(train_source)) if train_source else None

    def _resolve_checkpoints(self, wanted: Any, run_dir: Optional[str]) -> List[Tuple[str, Optional[Path]]]:
        run = Path(run_dir) if run_dir else None
        epochs = []
        if run is not None and run.is_dir():
            epochs = sorted((p for p in run.glob("epoch_*") if (p / IMAGE_ENCODER_FILE).is_file()), key=lambda p: int(p.name.split("_")[1]))
        if isinstance(wanted, str):
            if wanted == "all":
                return [(BASE, None)] + [(p.name, p) for p in epochs]
            if wanted == "last":
                if not epochs:
                    raise FileNotFoundError(f"checkpoints=last but run_dir={run} holds no epoch_*/{IMAGE_ENCODER_FILE}")
                return [(epochs[-1].name, epochs[-1])]
            wanted = [wanted]
        resolved = []
        for name in wanted:
            if name == BASE:
                resolved.append((BASE, None))
                continue
            path = Path(name) if Path(name).exists() or run is None else run / name
            if not path.exists():
                raise FileNotFoundError(f"checkpoint {name!r} not found (looked at {path})")
            resolved.append((path.name if path.is_dir() else path.stem, path))
        return resolved

    def _load_checkpoint(self, path: Optional[Path]) -> None:
        if path is None:
            self._model.image_encoder.load_state_dict(self._base_state)
        else:
            load_image_encoder_weights(path, self._model.image_encoder)

    def _read_samples(self, cfg: DictConfig) -> Tuple[List[Dict[str, Any]], int]:
        source = Path(cfg.dataset.source)
        records = load_records(source)
        if not records:
            raise RecordError(source, None, "<file>", "the test file holds no records")
        image_dir = Path(cfg.dataset.image_dir) if cfg.dataset.get("image_dir") else None
        samples, skipped = [], 0
        for index, record in enumerate(records[: cfg.get("max_samples", None)]):
            try:
                parsed = parse_record(record, source, index, image_dir)
                if parsed.image_path is not None:
                    load_image(parsed.image_path)
            except (RecordError, ImageLoadError) as error:
                if not cfg.dataset.get("skip_bad_records", False):
                    raise RecordError(source, index, "image", str(error)) if isinstance(error, ImageLoadError) else error
                log.warning("skipped: %s", error)
                skipped += 1
                continue
            question = next(text for role, text in parsed.turns if role == "user")
            reference = next(text for role, text in parsed.turns if role == "assistant")
            samples.append({
                "id": record.get("id", index), "image": str(parsed.image_path or ""), "question": question,
                "reference": reference, "answer_type": str(record.get("answer_type", "")).strip(),
                "question_type": str(record.get("question_type", "")),
            })
        return samples, skipped

    def _answer(
        self,
        questions: List[str],
        image_paths: List[str],
        descriptions: Optional[List[str]] = None,
        max_new_tokens: Optional[List[int]] = None,
    ) -> List[str]:
        """Generate answers for a list of questions, in batches of equal token limits."""
        limits = max_new_tokens or [self._cfg.max_new_tokens] * len(questions)
        groups: Dict[int, List[int]] = {}
        for index, limit in enumerate(limits):
            groups.setdefault(limit, []).append(index)
        answers: List[str] = [""] * len(questions)
        for limit, indices in groups.items():
            pick = lambda values: [values[i] for i in indices]  # noqa: E731
            outputs = self._answer_batches(pick(questions), pick(image_paths), pick(descriptions) if descriptions else None, limit)
            for index, answer in zip(indices, outputs):
                answers[index] = answer
        return answers

    def _answer_batches(
        self, questions: List[str], image_paths: List[str], descriptions: Optional[List[str]], max_new_tokens: int
    ) -> List[str]:
        cfg = self._cfg
        few_shot = [(e["question"], e["answer"]) for e in cfg.get("few_shot", None) or []]
        answers: List[str] = []
        generator = torch.Generator(device=self._device).manual_seed(cfg.get("seed", 0))
        batch_size = cfg.batch_size
        for start in tqdm(range(0, len(questions), batch_size), desc="generating", leave=False):
            prompts, images = [], []
            for offset in range(start, min(start + batch_size, len(questions))):
                has_image = bool(image_paths[offset])
                if descriptions is not None:
                    messages = describe_then_answer_prompt(questions[offset], descriptions[offset])
                else:
                    messages = direct_prompt(questions[offset], has_image, few_shot=few_shot)
                tokens, _ = self._transform.tokenize(messages, add_end_tokens=False)
                prompts.append(tokens)
                if has_image:
                    image = load_image(Path(image_paths[offset]))
                    if cfg.get("blank_images", False):  # ablation: does the model use the image?
                        image = PIL.Image.new("RGB", image.size, (128, 128, 128))
                    images.append(self._transform.image_transform(image))
            stacked = torch.stack(images).to(self._device, self._dtype) if images else None
            outputs = generate(
                self._model, prompts, stacked, pad_id=self._tokenizer.pad_id, stop_tokens=self._tokenizer.stop_tokens,
                max_new_tokens=max_new_tokens, temperature=cfg.get("temperature", 0.0), top_k=cfg.get("top_k", None),
                generator=generator,
            )
            answers += [self._tokenizer.decode(out).strip() for out in outputs]
        return answers

    def _predict(self, samples: List[Dict[str, Any]]) -> pd.DataFrame:
        questions = [s["question"] for s in samples]
        images = [s["image"] for s in samples]
        by_type = self._cfg.get("max_new_tokens_by_answer_type", None) or {}
        limits = [by_type.get(s["answer_type"].upper(), self._cfg.max_new_tokens) for s in samples]
        if self._cfg.get("mode", "direct") == "describe_then_answer":
            unique_images = sorted({path for path in images if path})
            described = dict(zip(unique_images, self._answer([None] * len(unique_images), unique_images, [None] * len(unique_images))))
            descriptions = [described.get(path) for path in images]
            predictions = self._answer(questions, images, descriptions, limits)
            frame = pd.DataFrame(samples).assign(prediction=predictions, description=descriptions)
        else:
            frame = pd.DataFrame(samples).assign(prediction=self._answer(questions, images, max_new_tokens=limits))
        return frame

    def quick_look(self, image: str, prompt: str) -> None:
        """Print the answers of every selected checkpoint to one image and prompt."""
        for name, path in self._checkpoints:
            self._load_checkpoint(path)
            answer = self._answer([prompt], [image])[0]
            print(f"{name:>12}: {answer}")

    def run(self) -> pd.DataFrame:
        """Generate and score for every checkpoint; write predictions, tables, plot and report."""
        cfg = self._cfg
        samples, skipped = self._read_samples(cfg)
        rows, frames = [], {}
        for name, path in self._checkpoints:
            self._load_checkpoint(path)
            start = time.perf_counter()
            frame = self._predict(samples)
            seconds = time.perf_counter() - start
            checkpoint_dir = self._output_dir / name
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(checkpoint_dir / "predictions.csv", lambda temp, f=frame: f.to_csv(temp, index=False))
            scores = score_predictions(frame, meteor=cfg.get("meteor", True))
            if self._train_records is not None:
                scores.update(answer_form_rates(frame, self._train_records))
            scores.update(samples_per_second=len(frame) / seconds, skipped=skipped)
            atomic_write(checkpoint_dir / "metrics.json", lambda temp, s=scores: Path(temp).write_text(json.dumps(s, indent=1)))
            epoch = int(name.split("_")[1]) if name.startswith("epoch_") and name.split("_")[1].isdigit() else None
            rows.append({"checkpoint": name, "epoch": epoch, **scores})
            frames[name] = frame
            log.info("%s: %s", name, {k: round(v, 2) for k, v in scores.items() if isinstance(v, float) and "/" not in k})
        table = pd.DataFrame(rows)
        write_metrics_table(rows, self._output_dir / "metrics_by_epoch.csv", self._output_dir / "metrics_by_epoch.json")
        headline = [m for m in cfg.get("plot_metrics", ["closed_accuracy", "open_exact_match", "BLEU-4", "CIDEr"]) if m in table and table[m].notna().any()]
        plots = []
        if headline:
            plot_metrics_by_epoch(table, headline, self._output_dir / "metrics_by_epoch.png")
            plots.append(self._output_dir / "metrics_by_epoch.png")
        last = self._checkpoints[-1][0]
        write_html_report(self._output_dir / "report.html", f"medcap evaluation: {last}", table, frames[last], plot_paths=plots)
        print(table.drop(columns=[c for c in table.columns if "/" in c]).to_string(index=False))
        return table

    def cleanup(self) -> None:
        """Nothing to release: kept for the recipe interface."""


TRAINING_KEYS = ("model", "checkpointer", "tokenizer", "image_transform", "max_seq_len")


def _with_training_config(cfg: DictConfig) -> DictConfig:
    """Fill model, checkpointer, tokenizer, image_transform, max_seq_len from ``run_dir/config.yaml``.

    The run's saved training config is the base; what the generation config (or a ``key=value``
    override such as ``model.projector.num_tokens=8``) gives wins.
    """
    saved = Path(str(cfg.get("run_dir", "") or "")) / "config.yaml"
    if cfg.get("run_dir", None) and saved.is_file():
        training_cfg = OmegaConf.load(saved)
        base = OmegaConf.create({key: training_cfg[key] for key in TRAINING_KEYS if key in training_cfg})
        cfg = OmegaConf.merge(base, cfg)
    missing = [key for key in TRAINING_KEYS if key not in cfg]
    missing += [key for key in TRAINING_KEYS[:-1] if key in cfg and "_component_" not in cfg[key]]
    if missing:
        raise FileNotFoundError(f"config lacks {missing} and run_dir has no saved training config ({saved})")
    return cfg


@config.parse
def recipe_main(cfg: DictConfig) -> None:
    """Entry point for ``tune run`` and ``python recipes/generate.py``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:%(name)s: %(message)s")
    recipe = GenerationRecipe(cfg)
    recipe.setup(cfg)
    if cfg.get("image", None):
        recipe.quick_look(cfg.image, cfg.get("prompt", "Describe the image concisely."))
    else:
        recipe.run()
    recipe.cleanup()


if __name__ == "__main__":
    sys.exit(recipe_main())
