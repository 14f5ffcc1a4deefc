"""Judge VQA predictions with a text-only LLM (medcap's RIGHT/WRONG protocol, or options).

Launch (from the repository root)::

    PYTHONPATH=. tune run recipes/llm_judge.py --config recipes/configs/medcap/judge_tiny_cpu.yaml \\
        predictions=PATH.csv output=PATH.csv
    python recipes/llm_judge.py --config recipes/configs/medcap/judge_llama3_70B.yaml \\
        predictions=PATH.csv output=PATH.csv mode=choice

The output CSV is resumable: run the same command again after an interruption (even ``kill -9``):
finished rows are not judged again and the final CSV equals an uninterrupted run's. Prints one
JSON summary (counts, unparsable replies apart, accuracies); bad input, an output that belongs to
other predictions, or a full disk exit with status 1 and a message naming the file (and the
column or the bytes needed). See docs/judge_report.md.
"""

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Dict

if __package__ in (None, ""):  # `python recipes/x.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from omegaconf import DictConfig, OmegaConf
from torchtune import config, training, utils

from medcap import config as medcap_config
from medcap.checkpoint.decoder import load_decoder_state, load_decoder_weights
from medcap.generation.judge import ChatJudge
from medcap.generation.judge_csv import judge_csv, read_predictions
from medcap.generation.judge_quantize import quantize_linear_4bit
from medcap.models import MedcapModel, text_only_model
from medcap.utils.atomic import WriteError

log = logging.getLogger("medcap")
REQUIRED_KEYS = ("predictions", "output", "decoder", "checkpointer", "tokenizer")
# every top-level key this recipe reads (others are refused: a typo must not be silently ignored)
CONFIG_KEYS = (
    *REQUIRED_KEYS, "mode", "batch_size", "max_rows", "max_new_tokens", "system_prompt", "score_candidates", "progress",
    "device", "dtype", "quantize_4bit", "quant_type", "decoder_quantization", "seed", "num_threads",
)


class LLMJudgeRecipe:
    """Batched, resumable LLM judging of a predictions CSV with any torchtune decoder.

    Config: ``decoder`` (a torchtune decoder builder), ``checkpointer`` (the torchtune
    checkpointer that loads it) and ``tokenizer`` (a chat tokenizer), all ``_component_`` nodes;
    ``predictions`` and ``output`` (CSV paths); ``mode`` (``right_wrong`` | ``choice``),
    ``batch_size``, ``max_rows`` (new rows per run), ``max_new_tokens``, ``system_prompt``,
    ``score_candidates`` (the likeliest allowed reply instead of generating), ``progress``;
    ``device``, ``dtype``, ``quantize_4bit`` with ``quant_type``, ``decoder_quantization`` (``nf4`` |
    ``int8``: quantized layer by layer while loading, as the training decoder), ``seed``, ``num_threads``.

    Raises:
        ValueError: an unknown or unset key, or bad predictions (checked before the model loads).
        FileNotFoundError: a missing predictions file.
    """

    def __init__(self, cfg: DictConfig) -> None:
        medcap_config.check_config_keys(cfg, CONFIG_KEYS, "llm_judge")
        for key in REQUIRED_KEYS:
            if OmegaConf.select(cfg, key, throw_on_missing=False) in (None, "???"):
                raise ValueError(f"{key!r} is not set (add {key}=... to the command line)")
        self._mode = cfg.get("mode", "right_wrong")
        self._predictions, self._output = Path(cfg.predictions), Path(cfg.output)
        read_predictions(self._predictions, self._mode)  # fail on bad input before loading a large model
        self._device = utils.get_device(cfg.get("device", "cpu"))
        self._dtype = training.get_dtype(cfg.get("dtype", "fp32"), device=self._device)
        self._batch_size = cfg.get("batch_size", 8)
        self._max_rows = cfg.get("max_rows", None)
        self._progress = cfg.get("progress", False)
        training.set_seed(cfg.get("seed", 0))
        torch.set_num_threads(cfg.get("num_threads", torch.get_num_threads()))

    def setup(self, cfg: DictConfig) -> None:
        """Load the decoder (optionally in 4-bit) and the tokenizer; wrap them as a judge."""
        start = time.perf_counter()
        self._model = self._setup_model(cfg)
        self._tokenizer = medcap_config.instantiate(cfg.tokenizer)
        self._judge = ChatJudge(self._model, self._tokenizer, max_new_tokens=cfg.get("max_new_tokens", 16),
                                system_prompt=cfg.get("system_prompt", None), score_candidates=cfg.get("score_candidates", False))
        self._load_seconds = time.perf_counter() - start

    def _setup_model(self, cfg: DictConfig) -> MedcapModel:
        """Build the decoder without allocating it twice, load the checkpoint, optionally quantise.

        The decoder is built on the meta device and the checkpoint tensors are assigned to it, so peak
        memory is one copy of the weights (140 GB in bf16 for a 70B model, before 4-bit quantisation).
        """
        with training.set_default_dtype(self._dtype), torch.device("meta"):
            decoder = medcap_config.instantiate(cfg.decoder)
        if cfg.get("decoder_quantization", None):  # the training decoder's loader: quantized module by module
            model = text_only_model(decoder, decoder_quantization=cfg.decoder_quantization)
            load_decoder_weights(model.decoder, load_decoder_state(cfg.checkpointer), device=self._device)
            model.decoder.eval().requires_grad_(False)
            return model
        state_dict = load_decoder_state(cfg.checkpointer)
        decoder.load_state_dict(state_dict, assign=True)
        del state_dict
        for module in decoder.modules():
            if hasattr(module, "rope_init"):  # RoPE caches are not in the checkpoint: build them for real
                module.rope_init()
        decoder.to(dtype=self._dtype)
        if cfg.get("quantize_4bit", False):
            replaced = quantize_linear_4bit(decoder, compute_dtype=self._dtype, quant_type=cfg.get("quant_type", "nf4"))
            log.info("quantize_4bit: %d Linear layers -> bitsandbytes Linear4bit (%s)", replaced, cfg.get("quant_type", "nf4"))
        decoder.to(device=self._device)  # bitsandbytes quantises the Linear4bit weights here
        decoder.eval().requires_grad_(False)
        return text_only_model(decoder)

    def run(self) -> Dict[str, Any]:
        """Judge the rows of ``predictions`` not yet in ``output``; print and return the summary."""
        start = time.perf_counter()
        summary = judge_csv(self._predictions, self._output, self._judge, mode=self._mode, batch_size=self._batch_size,
                            max_rows=self._max_rows, progress=self._progress)
        summary["load_seconds"] = round(self._load_seconds, 2)
        summary["judge_seconds"] = round(time.perf_counter() - start, 2)
        print(json.dumps(summary, indent=2))
        return summary

    def cleanup(self) -> None:
        """Release the model (a 70B judge holds most of a GPU)."""
        del self._judge, self._model
        if self._device.type == "cuda":
            torch.cuda.empty_cache()


@config.parse
def recipe_main(cfg: DictConfig) -> int:
    """Entry point for ``tune run`` and ``python recipes/llm_judge.py``; exit status 1 on bad input."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:%(name)s: %(message)s")
    try:
        recipe = LLMJudgeRecipe(cfg)
        recipe.setup(cfg)
        recipe.run()
    except (FileNotFoundError, ValueError, WriteError) as error:  # WriteError: a full disk, an unwritable folder
        print(f"error: {error}", file=sys.stderr)
        return 1
    recipe.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(recipe_main())
