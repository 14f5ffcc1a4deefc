"""Generate with one or every checkpoint of a run, score, and report.

Launch (from the repository root)::

    PYTHONPATH=. tune run recipes/generate.py --config recipes/configs/medcap/generate_tiny_cpu.yaml
    python recipes/generate.py --config recipes/configs/medcap/generate_tiny_cpu.yaml checkpoints=all
    # a quick look at one image: base (untrained image side) and tuned answers side by side
    python recipes/generate.py --config ... image=path/to/scan.png prompt="Is there a lesion?"

Per checkpoint ``{output_dir}/{checkpoint}/predictions.csv`` (image, question, reference,
prediction, answer_type, ...) and ``metrics.json`` (the flat metrics plus ``intervals`` and
``bootstrap``); across checkpoints ``metrics_by_epoch.csv`` and ``.json``,
``intervals_by_epoch.csv``/``.json`` (95% bootstrap intervals), ``comparisons.csv``/``.json``
(each checkpoint minus base, and minus a blank-image run when one exists), a plot and a
self-contained ``report.html``. ``report_only=True`` rescores the predictions already in
``output_dir`` and rewrites those files (no model), e.g. after the blank-image run.

A rerun (say after a kill) skips every checkpoint whose ``predictions.csv`` and ``metrics.json`` are
already written (both atomic, so present means complete) for the same questions, the same generation
settings and a checkpoint file no newer than them, and says so in the log; ``skip_complete=False``
redoes them.

Under torchrun (``torchrun --nproc_per_node N recipes/generate.py --config ...``) every process holds
the whole model and decodes its contiguous share of the records in its own batches; rank 0 gathers the
answers and writes exactly the files one process writes, rows in the same order.
"""

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

if __package__ in (None, ""):  # `python recipes/x.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd
import PIL.Image
import torch
import torch.distributed as dist
from omegaconf import DictConfig, ListConfig, OmegaConf
from torchtune import config, training, utils
from tqdm import tqdm

from medcap import config as medcap_config
from medcap.checkpoint import IMAGE_ENCODER_FILE, atomic_write, load_decoder_adapters, load_image_encoder_weights
from medcap.checkpoint.decoder import load_frozen_decoder
from medcap.data import check_transform_fits_model, load_image, load_records
from medcap.generation import answer_form_rates, describe_then_answer_prompt, direct_prompt, generate, score_predictions
from medcap.generation.evaluate import prediction_intervals
from medcap.generation.report import plot_metrics_by_epoch, write_html_report, write_metrics_table, write_records
from medcap.metrics.predictions import Bootstrap, compare_frames, comparison_record, intervals_json

log = logging.getLogger("medcap")
BASE = "base"
EVAL_DATASET = "medcap.data.sharegpt_eval_dataset"
IMAGE_CACHE_SIZE = 4096  # transformed images kept across checkpoints (distinct files)
BLANK_EVAL_DIR = "eval_blank"  # {run_dir}/eval_blank: the blank-image evaluation compared against by default
INTERVAL_COLUMNS = ("checkpoint", "epoch", "metric", "value", "ci_low", "ci_high", "n", "n_clusters", "resampled")
COMPARISON_COLUMNS = ("checkpoint", "against", "metric", "a", "b", "difference", "ci_low", "ci_high", "n",
                      "n_clusters", "mcnemar_p", "right_to_wrong", "wrong_to_right", "resampled")


class GenerationRecipe:
    """Batched greedy/sampled generation over a ShareGPT test file for several checkpoints.

    Config: ``model``, ``checkpointer``, ``model_transform`` as in training (by default read from
    ``run_dir/config.yaml``; the image transform runs without train augmentation);
    ``run_dir`` (a training ``output_dir``) and ``checkpoints`` (``all``: ``base`` + every
    ``epoch_*``; ``last``; ``base``; or a list of names / paths); ``dataset`` (a
    ``medcap.data.sharegpt_eval_dataset`` node: ``source``, ``image_dir``, ``skip_bad_records``,
    ``image_check``, ``max_samples``) or ``image`` + ``prompt``; ``mode`` (``direct`` | ``describe_then_answer``),
    ``max_new_tokens_by_answer_type`` (e.g. ``{CLOSED: 8, OPEN: 16}``: short answers stop early),
    ``few_shot`` (list of ``{question, answer}``); ``batch_size``, ``max_new_tokens``,
    ``temperature``, ``top_k``, ``seed``; ``meteor``; ``output_dir``;
    ``train_source`` (optional training JSON: adds the share of answers in a trained form);
    ``blank_images`` (feed uniform gray images instead: shows whether answers use the image);
    ``bootstrap`` (``{resamples, confidence, seed, unit: auto|image|question}``; null: no
    intervals or comparisons); ``skip_complete`` (default True: a rerun skips checkpoints whose
    outputs are complete); ``compare_to`` (``{name: eval_dir}``: each checkpoint minus that
    evaluation's same-named checkpoint; default ``{blank images: run_dir/eval_blank}`` when that
    folder exists and this is not a blank-image run; ``{}``: none); ``report_only`` (rescore
    ``output_dir``'s predictions and rewrite metrics, comparisons and report, no model).
    """

    def __init__(self, cfg: DictConfig) -> None:
        medcap_config.check_config_keys(cfg, CONFIG_KEYS, "generate")
        if not cfg.get("report_only", False):
            cfg = _with_training_config(cfg)
        self._world_size, self._rank = _join_torchrun(cfg.get("device", "cpu"))
        self._is_rank_zero = self._rank == 0
        if not self._is_rank_zero:
            logging.getLogger().setLevel(logging.WARNING)  # rank 0 speaks for all
        self._device = utils.get_device(cfg.get("device", "cpu"))  # cuda: cuda:LOCAL_RANK under torchrun
        self._dtype = training.get_dtype(cfg.get("dtype", "fp32"), device=self._device)
        self._cfg = cfg
        self._bootstrap = _bootstrap_settings(cfg.get("bootstrap", {}))
        self._output_dir = Path(cfg.output_dir)
        train_source = cfg.get("train_source", None)
        self._train_records = load_records(Path(train_source)) if train_source else None
        training.set_seed(cfg.get("seed", 0))  # under torchrun: seed + rank
        if self._world_size > 1:
            torch.manual_seed(cfg.get("seed", 0))  # one untrained image side (the base checkpoint) on every rank

    def setup(self, cfg: DictConfig) -> None:
        """Build the model with its frozen decoder weights, the tokenizer and the inputs."""
        cfg = self._cfg
        with training.set_default_dtype(self._dtype), self._device:
            self._model = medcap_config.instantiate(cfg.model)
        load_frozen_decoder(cfg.checkpointer, self._model.decoder)
        self._model.to(device=self._device, dtype=self._dtype).eval()
        self._base_state = {k: v.clone() for k, v in self._model.image_encoder.state_dict().items()}
        transform_cfg = cfg.model_transform.copy()
        if transform_cfg.get("image_transform") is not None and "train_augmentation" in transform_cfg.image_transform:
            transform_cfg.image_transform.train_augmentation = False  # evaluation sees the eval preprocessing
        self._transform = medcap_config.instantiate(transform_cfg, num_image_tokens=self._model.num_image_tokens)
        check_transform_fits_model(self._transform, self._model)
        self._tokenizer = self._transform.tokenizer
        self._checkpoints = self._resolve_checkpoints(cfg.get("checkpoints", "all"), cfg.get("run_dir", None))

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
        load_decoder_adapters(path, self._model.decoder)  # decoder LoRA (a no-op without); base: adapters zeroed

    def _build_dataset(self, cfg: DictConfig):
        """The test set: the configured evaluation dataset component (the training data path)."""
        node = cfg.dataset if "_component_" in cfg.dataset else OmegaConf.merge({"_component_": EVAL_DATASET}, cfg.dataset)
        dataset = medcap_config.instantiate(node)
        if dataset.skipped:
            log.warning("%s: %d bad records skipped", dataset.source, len(dataset.skipped))
        return dataset

    def _answer(
        self,
        questions: List[str],
        image_indices: List[Optional[int]],
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
            outputs = self._answer_batches(pick(questions), pick(image_indices), pick(descriptions) if descriptions else None, limit)
            for index, answer in zip(indices, outputs):
                answers[index] = answer
        return answers

    def _answer_batches(
        self, questions: List[str], image_indices: List[Optional[int]], descriptions: Optional[List[str]], max_new_tokens: int
    ) -> List[str]:
        cfg = self._cfg
        few_shot = [(e["question"], e["answer"]) for e in cfg.get("few_shot", None) or []]
        answers: List[str] = []
        generator = torch.Generator(device=self._device).manual_seed(cfg.get("seed", 0))
        batch_size = cfg.batch_size
        for start in tqdm(range(0, len(questions), batch_size), desc="generating", leave=False):
            prompts, images = [], []
            for offset in range(start, min(start + batch_size, len(questions))):
                has_image = image_indices[offset] is not None
                if descriptions is not None:
                    messages = describe_then_answer_prompt(questions[offset], descriptions[offset])
                else:
                    messages = direct_prompt(questions[offset], has_image, few_shot=few_shot)
                tokens, _ = self._transform.tokenize(messages, add_end_tokens=False)
                prompts.append(tokens)
                if has_image:
                    images.append(self._image_tensor(image_indices[offset]))
            stacked = torch.stack(images).to(self._device, self._dtype) if images else None
            outputs = generate(
                self._model, prompts, stacked, pad_id=self._tokenizer.pad_id, stop_tokens=self._tokenizer.stop_tokens,
                max_new_tokens=max_new_tokens, temperature=cfg.get("temperature", 0.0), top_k=cfg.get("top_k", None),
                generator=generator,
            )
            answers += [self._tokenizer.decode(out).strip() for out in outputs]
        return answers

    def _image_tensor(self, index: int) -> torch.Tensor:
        """The model input of image ``index`` of the image source, transformed once per run."""
        if index not in self._image_cache:
            image = self._load_image(index)
            if self._cfg.get("blank_images", False):  # ablation: does the model use the image?
                image = PIL.Image.new("RGB", image.size, (128, 128, 128))
            tensor = self._transform.image_transform(image)
            if len(self._image_cache) >= IMAGE_CACHE_SIZE:
                return tensor
            self._image_cache[index] = tensor
        return self._image_cache[index]

    def _use_images(self, load_image: Callable[[int], PIL.Image.Image]) -> None:
        self._load_image, self._image_cache = load_image, {}

    def _predict(self, samples: List[Dict[str, Any]]) -> pd.DataFrame:
        """Answer every sample; under torchrun each rank answers its share and all get every answer."""
        start, stop = _share(len(samples), self._cfg.batch_size, self._world_size, self._rank)
        columns = self._answer_samples(samples[start:stop], offset=start)
        if self._world_size > 1:  # answers (strings) in rank order = sample order
            parts: List[Optional[Dict[str, List[Any]]]] = [None] * self._world_size
            dist.all_gather_object(parts, columns)
            columns = {key: [value for part in parts for value in part[key]] for key in columns}
        return pd.DataFrame(samples).assign(**columns)

    def _answer_samples(self, samples: List[Dict[str, Any]], offset: int = 0) -> Dict[str, List[Any]]:
        """The ``prediction`` (and ``description``) column of consecutive samples from ``offset`` on."""
        questions = [s["question"] for s in samples]
        first_of_path: Dict[str, int] = {}
        for index, sample in enumerate(samples):  # one image index (into the whole source) per distinct file
            if sample["image"]:
                first_of_path.setdefault(sample["image"], offset + index)
        images = [first_of_path[s["image"]] if s["image"] else None for s in samples]
        by_type = self._cfg.get("max_new_tokens_by_answer_type", None) or {}
        limits = [by_type.get(s["answer_type"].upper(), self._cfg.max_new_tokens) for s in samples]
        if self._cfg.get("mode", "direct") == "describe_then_answer":
            unique_images = sorted(set(first_of_path.values()))
            described = dict(zip(unique_images, self._answer([None] * len(unique_images), unique_images, [None] * len(unique_images))))
            descriptions = [described.get(index) for index in images]
            return {"prediction": self._answer(questions, images, descriptions, limits), "description": descriptions}
        return {"prediction": self._answer(questions, images, max_new_tokens=limits)}

    def quick_look(self, image: str, prompt: str) -> None:
        """Print the answers of every selected checkpoint to one image and prompt."""
        if not self._is_rank_zero:  # one image: nothing to share out
            return
        self._use_images(lambda _: load_image(Path(image)))
        for name, path in self._checkpoints:
            self._load_checkpoint(path)
            answer = self._answer([prompt], [0])[0]
            print(f"{name:>12}: {answer}")

    def run(self) -> pd.DataFrame:
        """Generate and score for every checkpoint; write predictions, tables, plot and report."""
        cfg = self._cfg
        dataset = self._build_dataset(cfg)
        samples, skipped = dataset.samples, len(dataset.skipped)
        self._use_images(dataset.load_image)
        rows, frames, found_intervals = [], {}, {}
        for name, path in self._checkpoints:
            complete = self._complete_outputs(name, path, samples)
            if complete is not None:  # a rerun after a kill: this checkpoint was done
                frames[name], scores = complete
                found_intervals[name] = None  # recomputed from the predictions for the tables
                rows.append({"checkpoint": name, "epoch": _epoch_of(name), **scores})
                log.info("%s: skipped, outputs complete in %s (skip_complete=False redoes it)", name, self._output_dir / name)
                continue
            self._load_checkpoint(path)
            start = time.perf_counter()
            frame = self._predict(samples)
            seconds = time.perf_counter() - start
            if not self._is_rank_zero:  # rank 0 writes
                continue
            checkpoint_dir = self._output_dir / name
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(checkpoint_dir / "predictions.csv", lambda temp, f=frame: f.to_csv(temp, index=False))
            scores, found_intervals[name] = self._score(name, frame, samples_per_second=len(frame) / seconds, skipped=skipped)
            rows.append({"checkpoint": name, "epoch": _epoch_of(name), **scores})
            frames[name] = frame
            log.info("%s: %s", name, {k: round(v, 2) for k, v in scores.items() if isinstance(v, float) and "/" not in k})
        if not self._is_rank_zero:
            return None
        return self._write_evaluation(rows, frames, found_intervals)

    def _generation_settings(self) -> Dict[str, Any]:
        """What shapes the predictions besides the questions and the weights (kept in ``metrics.json``)."""
        cfg = self._cfg
        keys = ("mode", "max_new_tokens", "max_new_tokens_by_answer_type", "temperature", "top_k", "seed", "few_shot",
                "blank_images", "dtype", "model", "model_transform", "checkpointer")
        settings = {key: OmegaConf.to_container(cfg[key], resolve=True) if isinstance(cfg.get(key), DictConfig | ListConfig)
                    else cfg.get(key) for key in keys}
        return json.loads(json.dumps(settings))  # as read back from the file

    def _complete_outputs(self, name: str, path: Optional[Path], samples: List[Dict[str, Any]]) -> Optional[Tuple[pd.DataFrame, Dict[str, Any]]]:
        """The predictions and scores of a checkpoint already evaluated with these questions and settings
        (rank 0 looks, every rank gets the verdict); None when it must be (re)done."""
        found = self._find_complete_outputs(name, path, samples) if self._is_rank_zero else None
        if self._world_size > 1:
            verdict = [found is not None]
            dist.broadcast_object_list(verdict, src=0)
            return found if self._is_rank_zero else ((None, {}) if verdict[0] else None)
        return found

    def _find_complete_outputs(self, name: str, path: Optional[Path], samples: List[Dict[str, Any]]) -> Optional[Tuple[pd.DataFrame, Dict[str, Any]]]:
        if not self._cfg.get("skip_complete", True):
            return None
        predictions, metrics = self._output_dir / name / "predictions.csv", self._output_dir / name / "metrics.json"
        if not (predictions.is_file() and metrics.is_file()):  # atomic writes: present means complete
            return None
        saved = json.loads(metrics.read_text())
        if saved.get("generation") != self._generation_settings():
            log.info("%s: %s was written with other generation settings: generating again", name, metrics)
            return None
        weights = None if path is None else (path / IMAGE_ENCODER_FILE if path.is_dir() else path)
        if weights is not None and weights.stat().st_mtime > metrics.stat().st_mtime:
            log.info("%s: %s is newer than %s: generating again", name, weights, metrics)
            return None
        frame = pd.read_csv(predictions, dtype=str, keep_default_na=False)
        for column in ("image", "question", "reference"):
            expected = ["" if sample.get(column) is None else str(sample[column]) for sample in samples]
            if column not in frame or frame[column].tolist() != expected:
                log.info("%s: %s holds other questions: generating again", name, predictions)
                return None
        scores = {key: value for key, value in saved.items() if key not in ("intervals", "bootstrap", "generation")}
        return frame, scores

    def _score(
        self, name: str, frame: pd.DataFrame, settings: Optional[Dict[str, Any]] = None, **extra: Any
    ) -> Tuple[Dict[str, Any], Optional[Tuple]]:
        """Metrics of one checkpoint's predictions (+ ``extra``) and their intervals; writes
        ``{output_dir}/{name}/metrics.json`` (flat metrics, ``intervals``, ``bootstrap``, and the
        ``generation`` settings: this run's, or ``settings`` when rescoring)."""
        scores = score_predictions(frame, meteor=self._cfg.get("meteor", True))
        if self._train_records is not None:
            scores.update(answer_form_rates(frame, self._train_records))
        scores.update(extra)
        saved, found = dict(scores), None
        if self._bootstrap is not None:
            found = prediction_intervals(frame, self._train_records, self._bootstrap)
            saved.update(intervals=intervals_json(found[0]), bootstrap=found[1])
        saved["generation"] = self._generation_settings() if settings is None else settings
        path = self._output_dir / name / "metrics.json"
        atomic_write(path, lambda temp: Path(temp).write_text(json.dumps(saved, indent=1)))
        return scores, found

    def rebuild_report(self) -> pd.DataFrame:
        """``report_only=True``: rescore the predictions already in ``output_dir`` (the
        checkpoints of its ``metrics_by_epoch.json``; their samples/s and skipped counts are
        kept) and rewrite metrics, intervals, comparisons and the report; no model is built."""
        metrics_path = self._output_dir / "metrics_by_epoch.json"
        if not metrics_path.is_file():
            raise FileNotFoundError(f"report_only=True but {metrics_path} does not exist: run the evaluation first")
        rows, frames, found_intervals = [], {}, {}
        for old in json.loads(metrics_path.read_text()):
            name = old["checkpoint"]
            predictions = self._output_dir / name / "predictions.csv"
            if not predictions.is_file():
                raise FileNotFoundError(f"report_only=True: {predictions} (listed in {metrics_path}) does not exist")
            frames[name] = pd.read_csv(predictions, dtype=str, keep_default_na=False)
            kept = {key: old[key] for key in ("samples_per_second", "skipped") if key in old}
            metrics = self._output_dir / name / "metrics.json"  # the settings the predictions were made with
            settings = json.loads(metrics.read_text()).get("generation", {}) if metrics.is_file() else {}
            scores, found_intervals[name] = self._score(name, frames[name], settings=settings, **kept)
            rows.append({"checkpoint": name, "epoch": old.get("epoch"), **scores})
        return self._write_evaluation(rows, frames, found_intervals)

    def _compare_to(self) -> Dict[str, Path]:
        """Other evaluations each checkpoint is compared with: name -> output dir."""
        given = self._cfg.get("compare_to", None)
        if given is not None:
            return {str(name): Path(str(directory)) for name, directory in given.items()}
        run_dir = self._cfg.get("run_dir", None)
        if self._cfg.get("blank_images", False) or not run_dir:
            return {}
        blank = Path(str(run_dir)) / BLANK_EVAL_DIR
        if blank.is_dir() and blank.resolve() != self._output_dir.resolve():
            return {"blank images": blank}
        return {}

    def _comparisons(self, frames: Dict[str, pd.DataFrame]) -> List[Dict[str, Any]]:
        """Each checkpoint minus base (when base was evaluated) and minus every ``compare_to`` run."""
        pairs = [(BASE, frames[BASE], name) for name in frames if name != BASE] if BASE in frames else []
        for label, directory in self._compare_to().items():
            for name in frames:
                other = directory / name / "predictions.csv"
                if other.is_file():
                    pairs.append((label, pd.read_csv(other, dtype=str, keep_default_na=False), name))
                else:
                    log.info("compare_to %s: no %s, %s not compared", label, other, name)
        records = []
        for label, other, name in pairs:
            try:
                comparisons, description, _ = compare_frames(other, frames[name], label, name,
                                                             train_records=self._train_records, bootstrap=self._bootstrap)
            except ValueError as error:
                log.warning("%s not compared with %s: %s", name, label, error)
                continue
            for key, comparison in comparisons.items():
                records.append({"checkpoint": name, "against": label, **comparison_record(key, comparison),
                                "resampled": description["resampled"]})
            for key in ("closed_accuracy", "open_exact_match"):
                if key in comparisons and comparisons[key].difference.value is not None:
                    difference, test = comparisons[key].difference, comparisons[key].mcnemar
                    band = "" if difference.ci_low is None else f" [{difference.ci_low:+.2f}, {difference.ci_high:+.2f}]"
                    log.info("%s - %s: %s %+.2f%s%s", name, label, key, difference.value, band,
                             f" McNemar p={test.p_value:.3g}" if test else "")
        return records

    def _write_evaluation(
        self, rows: List[Dict[str, Any]], frames: Dict[str, pd.DataFrame], found_intervals: Optional[Dict[str, Any]] = None
    ) -> pd.DataFrame:
        """Metric tables, intervals, comparisons, plot and report of the evaluated checkpoints
        (``found_intervals``: checkpoint -> intervals already computed)."""
        cfg = self._cfg
        table = pd.DataFrame(rows)
        write_metrics_table(rows, self._output_dir / "metrics_by_epoch.csv", self._output_dir / "metrics_by_epoch.json")
        intervals = comparisons = description = None
        if self._bootstrap is not None:
            interval_rows = []
            for row in rows:
                found, description = (found_intervals or {}).get(row["checkpoint"]) or prediction_intervals(
                    frames[row["checkpoint"]], self._train_records, self._bootstrap)
                interval_rows += [{"checkpoint": row["checkpoint"], "epoch": row["epoch"], "metric": key,
                                   **interval.as_dict(), "resampled": description["resampled"]}
                                  for key, interval in found.items()]
            intervals = write_records(interval_rows, INTERVAL_COLUMNS, self._output_dir / "intervals_by_epoch.csv",
                                      self._output_dir / "intervals_by_epoch.json")
            comparisons = write_records(self._comparisons(frames), COMPARISON_COLUMNS, self._output_dir / "comparisons.csv",
                                        self._output_dir / "comparisons.json")
        headline = [m for m in cfg.get("plot_metrics", ["closed_accuracy", "open_exact_match", "BLEU-4", "CIDEr"]) if m in table and table[m].notna().any()]
        plots = []
        if headline:
            plot_metrics_by_epoch(table, headline, self._output_dir / "metrics_by_epoch.png")
            plots.append(self._output_dir / "metrics_by_epoch.png")
        last = rows[-1]["checkpoint"]
        write_html_report(self._output_dir / "report.html", f"medcap evaluation: {last}", table, frames[last], plot_paths=plots,
                          intervals=intervals, comparisons=comparisons, bootstrap=description)
        print(table.drop(columns=[c for c in table.columns if "/" in c]).to_string(index=False))
        return table

    def cleanup(self) -> None:
        """Leave the process group (under torchrun)."""
        if dist.is_initialized():
            dist.destroy_process_group()


TRAINING_KEYS = ("model", "checkpointer", "model_transform")
# every top-level key this recipe reads (others are refused: a typo must not be silently ignored)
CONFIG_KEYS = (
    *TRAINING_KEYS, "run_dir", "checkpoints", "output_dir", "dataset", "image", "prompt", "mode", "few_shot",
    "batch_size", "max_new_tokens", "max_new_tokens_by_answer_type", "temperature", "top_k", "seed", "meteor",
    "plot_metrics", "train_source", "blank_images", "device", "dtype", "bootstrap", "compare_to", "report_only",
    "skip_complete",
)
BOOTSTRAP_KEYS = ("resamples", "confidence", "seed", "unit")


def _join_torchrun(device_name: str) -> Tuple[int, int]:
    """World size and rank: (1, 0) without torchrun; under torchrun join its process group (gloo/nccl)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 1, 0
    if not dist.is_initialized():
        device = utils.get_device(device_name)  # cuda -> cuda:LOCAL_RANK, set as this process's device
        dist.init_process_group(backend=training.get_distributed_backend(device.type))
    return dist.get_world_size(), dist.get_rank()


def _share(num_samples: int, batch_size: int, world_size: int, rank: int) -> Tuple[int, int]:
    """The rank's contiguous share ``[start, stop)`` of the samples, whole batches except the last share."""
    per_rank = -(-num_samples // (world_size * batch_size)) * batch_size
    return min(rank * per_rank, num_samples), min((rank + 1) * per_rank, num_samples)


def _epoch_of(name: str) -> Optional[int]:
    return int(name.split("_")[1]) if name.startswith("epoch_") and name.split("_")[1].isdigit() else None


def _bootstrap_settings(node: Any) -> Optional[Bootstrap]:
    """The ``bootstrap`` config node (missing keys take the defaults; null switches intervals off)."""
    if node is None:
        return None
    given = OmegaConf.to_container(node) if isinstance(node, DictConfig) else dict(node)
    unknown = sorted(set(given) - set(BOOTSTRAP_KEYS))
    if unknown:
        raise ValueError(f"bootstrap: unknown key {unknown[0]!r} (known: {', '.join(BOOTSTRAP_KEYS)})")
    return Bootstrap(**given)


def _with_training_config(cfg: DictConfig) -> DictConfig:
    """Fill ``model``, ``checkpointer`` and ``model_transform`` from ``run_dir/config.yaml``.

    The run's saved training config is the base; what the generation config (or a ``key=value``
    override such as ``model.projector.num_tokens=8``) gives wins.
    """
    saved = Path(str(cfg.get("run_dir", "") or "")) / "config.yaml"
    if cfg.get("run_dir", None) and saved.is_file():
        training_cfg = _upgrade_training_config(OmegaConf.load(saved))
        base = OmegaConf.create({key: training_cfg[key] for key in TRAINING_KEYS if key in training_cfg})
        cfg = OmegaConf.merge(base, cfg)
    missing = [key for key in TRAINING_KEYS if key not in cfg]
    missing += [key for key in TRAINING_KEYS if key in cfg and "_component_" not in cfg[key]]
    if missing:
        raise FileNotFoundError(f"config lacks {missing} and run_dir has no saved training config ({saved})")
    return cfg


def _upgrade_training_config(training_cfg: DictConfig) -> DictConfig:
    """Runs saved before ``model_transform`` existed keep ``tokenizer``, ``image_transform`` and
    ``max_seq_len`` at the top level: fold them into a ``model_transform`` node."""
    if "model_transform" in training_cfg or "tokenizer" not in training_cfg:
        return training_cfg
    node = {"_component_": "medcap.data.medcap_transform", "tokenizer": training_cfg.tokenizer,
            "max_seq_len": training_cfg.max_seq_len, "image_transform": training_cfg.get("image_transform")}
    return OmegaConf.merge(training_cfg, {"model_transform": node})


@config.parse
def recipe_main(cfg: DictConfig) -> None:
    """Entry point for ``tune run`` and ``python recipes/generate.py``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:%(name)s: %(message)s")
    recipe = GenerationRecipe(cfg)
    if cfg.get("report_only", False):
        if recipe._is_rank_zero:
            recipe.rebuild_report()
        recipe.cleanup()
        return
    recipe.setup(cfg)
    if cfg.get("image", None):
        recipe.quick_look(cfg.image, cfg.get("prompt", "Describe the image concisely."))
    else:
        recipe.run()
    recipe.cleanup()


if __name__ == "__main__":
    sys.exit(recipe_main())
