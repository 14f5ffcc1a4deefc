"""Reports: metric table files, plots, and the self-contained HTML page."""

import base64
import io
import json
import re

import numpy as np
import pandas as pd
import PIL.Image
import pytest

from medcap.generation.report import (
    plot_metrics_by_epoch,
    plot_training_loss,
    read_disk_logs,
    write_html_report,
    write_metrics_table,
)

ROWS = [
    {"checkpoint": "base", "epoch": None, "bleu1": 10.5, "exact": 20.0},
    {"checkpoint": "epoch_0", "epoch": 0, "bleu1": 15.25, "exact": 30.0},
    {"checkpoint": "epoch_1", "epoch": 1, "bleu1": 18.0, "exact": 35.5, "cider": 0.125},
]


def test_metrics_table_csv_and_json_exact(tmp_path):
    table = write_metrics_table(ROWS, tmp_path / "m.csv", tmp_path / "m.json")
    assert (tmp_path / "m.csv").read_text() == (
        "checkpoint,epoch,bleu1,exact,cider\n"
        "base,,10.5,20.0,\n"
        "epoch_0,0,15.25,30.0,\n"
        "epoch_1,1,18.0,35.5,0.125\n"
    )
    assert json.loads((tmp_path / "m.json").read_text()) == [
        {"checkpoint": "base", "epoch": None, "bleu1": 10.5, "exact": 20.0, "cider": None},
        {"checkpoint": "epoch_0", "epoch": 0, "bleu1": 15.25, "exact": 30.0, "cider": None},
        {"checkpoint": "epoch_1", "epoch": 1, "bleu1": 18.0, "exact": 35.5, "cider": 0.125},
    ]
    assert list(table.columns) == ["checkpoint", "epoch", "bleu1", "exact", "cider"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv", "m.json"]  # no temp files left


def test_metrics_table_numpy_values_and_nan_are_json(tmp_path):
    rows = [{"checkpoint": "epoch_2", "epoch": np.int64(2), "acc": np.float32(0.5), "f1": float("nan")}]
    write_metrics_table(rows, tmp_path / "m.csv", tmp_path / "m.json")
    assert json.loads((tmp_path / "m.json").read_text()) == [{"checkpoint": "epoch_2", "epoch": 2, "acc": 0.5, "f1": None}]
    assert (tmp_path / "m.csv").read_text() == "checkpoint,epoch,acc,f1\nepoch_2,2,0.5,\n"


def test_metrics_table_row_without_epoch_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"metrics row 1: missing field 'epoch'"):
        write_metrics_table([ROWS[0], {"checkpoint": "x", "bleu1": 1.0}], tmp_path / "m.csv", tmp_path / "m.json")


def _assert_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with PIL.Image.open(path) as image:
        image.verify()
    with PIL.Image.open(path) as image:
        assert image.format == "PNG" and image.width > 200 and image.height > 200


@pytest.fixture
def saved_figures(monkeypatch):
    """Every matplotlib figure the report module saves, captured as it is written."""
    from matplotlib.figure import Figure

    figures = []
    real_savefig = Figure.savefig

    def recording_savefig(self, *args, **kwargs):
        figures.append(self)
        return real_savefig(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording_savefig)
    return figures


def _lines(figure):
    """(label, x, y, linestyle, colour) of every line of a one-axes figure."""
    (axes,) = figure.axes
    return [(line.get_label(), [float(x) for x in line.get_xdata()], [float(y) for y in line.get_ydata()],
             line.get_linestyle(), line.get_color()) for line in axes.get_lines()]


def test_plot_metrics_by_epoch_png(tmp_path, saved_figures):
    table = write_metrics_table(ROWS, tmp_path / "m.csv", tmp_path / "m.json")
    plot_metrics_by_epoch(table, ["bleu1", "exact"], tmp_path / "metrics.png")
    _assert_png(tmp_path / "metrics.png")
    # the plotted data is the table's: tuned values against epoch, base as a dashed line of the same colour
    (figure,) = saved_figures
    lines = _lines(figure)
    assert [(label, x, y, style) for label, x, y, style, _ in lines] == [
        ("bleu1 (tuned)", [0.0, 1.0], [15.25, 18.0], "-"),
        ("bleu1 (base)", [0.0, 1.0], [10.5, 10.5], "--"),  # axhline: axes-fraction x, the base value as y
        ("exact (tuned)", [0.0, 1.0], [30.0, 35.5], "-"),
        ("exact (base)", [0.0, 1.0], [20.0, 20.0], "--"),
    ]
    colours = [colour for *_, colour in lines]
    assert colours[0] == colours[1] != colours[2] == colours[3]
    (axes,) = figure.axes
    assert list(axes.get_xticks()) == [0, 1] and axes.get_xlabel() == "epoch"
    assert [text.get_text() for text in axes.get_legend().get_texts()] == [line[0] for line in lines]

    # a table read back from the CSV (base epoch NaN), rows out of order and a metric the base lacks
    shuffled = pd.read_csv(tmp_path / "m.csv").iloc[[2, 0, 1]]
    plot_metrics_by_epoch(shuffled, ["exact", "cider"], tmp_path / "again.png")
    _assert_png(tmp_path / "again.png")
    again = _lines(saved_figures[1])
    assert [(label, x, style) for label, x, _, style, _ in again] == [
        ("exact (tuned)", [0.0, 1.0], "-"), ("exact (base)", [0.0, 1.0], "--"), ("cider (tuned)", [0.0, 1.0], "-")]
    assert again[0][2] == [30.0, 35.5] and again[1][2] == [20.0, 20.0]
    assert np.isnan(again[2][2][0]) and again[2][2][1] == 0.125  # no cider at epoch 0, and no base line for it
    with pytest.raises(ValueError, match="'meteor' is not a column"):
        plot_metrics_by_epoch(table, ["meteor"], tmp_path / "x.png")


def _write_disk_log(path, losses, start_step=1):
    # torchtune 0.6.1 DiskLogger.log_dict layout: "Step N | name:value name:value \n"
    lines = [f"Step {start_step + i} | loss:{loss} lr:0.001 tokens_per_second_per_gpu:12.5 \n" for i, loss in enumerate(losses)]
    path.write_text("".join(lines))


def test_training_loss_from_disk_logs(tmp_path, saved_figures):
    logs = tmp_path / "logs"
    logs.mkdir()
    _write_disk_log(logs / "log_1700000000.txt", [2.5, 2.25, 2.0])
    _write_disk_log(logs / "log_1700000900.txt", [1.75, 1.5], start_step=4)  # a resumed run
    (logs / "notes.txt").write_text("Step 1 | loss:99\n")  # not a DiskLogger file: ignored
    parsed = read_disk_logs(logs)
    assert list(parsed) == ["log_1700000000.txt", "log_1700000900.txt"]
    assert parsed["log_1700000000.txt"]["loss"].tolist() == [2.5, 2.25, 2.0]
    assert parsed["log_1700000900.txt"]["step"].tolist() == [4, 5]
    assert parsed["log_1700000900.txt"]["lr"].tolist() == [0.001, 0.001]
    plot_training_loss(logs, tmp_path / "loss.png")
    _assert_png(tmp_path / "loss.png")
    # one line per log file: its steps against its losses
    (figure,) = saved_figures
    assert [(label, x, y) for label, x, y, _, _ in _lines(figure)] == [
        ("log_1700000000.txt", [1.0, 2.0, 3.0], [2.5, 2.25, 2.0]),
        ("log_1700000900.txt", [4.0, 5.0], [1.75, 1.5]),
    ]
    assert figure.axes[0].get_xlabel() == "step" and figure.axes[0].get_ylabel() == "training loss"


def test_training_loss_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no torchtune DiskLogger file"):
        plot_training_loss(tmp_path, tmp_path / "loss.png")
    (tmp_path / "log_1.txt").write_text("Step 1 | lr:0.1 \n")
    with pytest.raises(ValueError, match="no 'loss' values"):
        plot_training_loss(tmp_path, tmp_path / "loss.png")


@pytest.fixture
def predictions(tmp_path):
    image_path = tmp_path / "scan.png"
    PIL.Image.new("L", (300, 200), color=120).save(image_path)
    rows = [
        {"image": str(image_path), "question": f"Is there a spot {i}?", "reference": "yes",
         "prediction": "Yes." if i % 2 else "no", "answer_type": "CLOSED"}
        for i in range(80)
    ]
    rows[3]["prediction"] = "<script>alert('x')</script> & more"
    rows[5]["image"] = str(tmp_path / "gone.png")
    rows[7].update(answer_type="", reference="a chest x-ray", prediction="a chest x-ray")  # a caption row
    rows[9]["image"] = ""  # text-only row
    return pd.DataFrame(rows)


def _prediction_rows(page):
    body = page.split('<table class="predictions">', 1)[1]
    return re.findall(r"<tr><td>(\d+)</td>(.*?)</tr>", body, flags=re.S)


def test_html_report(tmp_path, predictions):
    table = write_metrics_table(ROWS, tmp_path / "m.csv", tmp_path / "m.json")
    plot_metrics_by_epoch(table, ["bleu1"], tmp_path / "metrics.png")
    # every row shown, so each special row is in the page
    write_html_report(tmp_path / "r.html", "Run <1>", table, predictions, sample_size=80, plot_paths=[tmp_path / "metrics.png"])
    page = (tmp_path / "r.html").read_text()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in page
    assert "<title>Run &lt;1&gt;</title>" in page
    rows = dict(_prediction_rows(page))
    assert len(rows) == 80
    assert 'class="missing"' in rows["5"] and ">missing</span>" in rows["5"]
    assert "<img" not in rows["9"] and "missing" not in rows["9"]
    assert '<td class=""></td>' in rows["7"]  # caption: no exact-match verdict
    assert '<td class="correct">correct</td>' in rows["1"]  # "Yes." == "yes" after normalisation
    assert '<td class="incorrect">incorrect</td>' in rows["0"]
    thumbnail = re.search(r'data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', rows["0"]).group(1)
    with PIL.Image.open(io.BytesIO(base64.b64decode(thumbnail))) as image:
        assert image.format == "JPEG" and image.size == (128, 85)  # 300x200 fitted into 128 px
    assert page.count("data:image/png;base64,") == 1  # the plot, embedded
    assert "<td>epoch_1</td>" in page and "<td>18.00</td>" in page  # metric table


def test_html_report_seeded_sample(tmp_path, predictions):
    table = pd.DataFrame(ROWS)
    write_html_report(tmp_path / "a.html", "a", table, predictions, sample_size=50, seed=3)
    write_html_report(tmp_path / "b.html", "a", table, predictions, sample_size=50, seed=3)
    write_html_report(tmp_path / "c.html", "a", table, predictions, sample_size=50, seed=4)
    shown = [[index for index, _ in _prediction_rows((tmp_path / f"{name}.html").read_text())] for name in "abc"]
    assert len(shown[0]) == 50 and len(set(shown[0])) == 50
    assert shown[0] == shown[1] and shown[0] != shown[2]
    expected = sorted(predictions.sample(n=50, random_state=3).index)
    assert [int(i) for i in shown[0]] == expected
    with pytest.raises(ValueError, match="missing column 'answer_type'"):
        write_html_report(tmp_path / "d.html", "a", table, predictions.drop(columns="answer_type"))


# --- intervals and differences in the report ----------------------------------------------------

from medcap.generation.report import write_records  # noqa: E402

INTERVALS = pd.DataFrame([
    {"checkpoint": "base", "metric": "closed_accuracy", "value": 50.0, "ci_low": 40.0, "ci_high": 60.0, "n": 100},
    {"checkpoint": "epoch_0", "metric": "closed_accuracy", "value": 70.0, "ci_low": 61.0, "ci_high": 79.0, "n": 100},
    {"checkpoint": "epoch_0", "metric": "closed_accuracy/question_type=PRES", "value": 80.0, "ci_low": 70.0,
     "ci_high": 90.0, "n": 40},
    {"checkpoint": "epoch_0", "metric": "token_f1", "value": 33.0, "ci_low": None, "ci_high": None, "n": 1},
])
COMPARISONS = pd.DataFrame([
    {"checkpoint": "epoch_0", "against": "base", "metric": "closed_accuracy", "difference": 20.0, "ci_low": 9.5,
     "ci_high": 30.5, "mcnemar_p": 0.0012, "right_to_wrong": 3, "wrong_to_right": 23},
    {"checkpoint": "epoch_0", "against": "base", "metric": "token_f1", "difference": -1.0, "ci_low": -4.0,
     "ci_high": 2.0, "mcnemar_p": None, "right_to_wrong": None, "wrong_to_right": None},
    {"checkpoint": "epoch_0", "against": "blank images", "metric": "closed_accuracy", "difference": -2.0,
     "ci_low": -3.5, "ci_high": -0.5, "mcnemar_p": 0.04, "right_to_wrong": 9, "wrong_to_right": 1},
])
BOOTSTRAP = {"resampled": "image", "n_images": 60, "n_questions": 100, "confidence": 0.95, "n_resamples": 2000, "seed": 0}


def _section(page, title):
    return page.split(f"<h2>{title}</h2>", 1)[1].split("<h2>", 1)[0]


def test_html_report_intervals_and_differences(tmp_path, predictions):
    table = write_metrics_table(ROWS, tmp_path / "m.csv", tmp_path / "m.json")
    write_html_report(tmp_path / "r.html", "run", table, predictions, intervals=INTERVALS, comparisons=COMPARISONS,
                      bootstrap=BOOTSTRAP)
    page = (tmp_path / "r.html").read_text()
    intervals = _section(page, "Confidence intervals")
    assert "95% percentile bootstrap, resampling whole images (60 images for 100 questions" in intervals
    assert "<td>70.00<br><small>[61.00, 79.00] n=100</small></td>" in intervals
    assert "<td>33.00<br><small>[no interval] n=1</small></td>" in intervals
    assert "question_type=PRES" not in intervals  # breakdowns stay in the tables on disk
    differences = _section(page, "Differences")
    assert "paired percentile bootstrap (the same resampled questions on both sides)" in differences
    vs_base, vs_blank = differences.split("<h3>vs base</h3>")[1].split("<h3>vs blank images</h3>")
    assert ('<td class="up">+20.00<br><small>[+9.50, +30.50]</small><br><small>p=0.0012 &middot; 3&rarr;wrong '
            "23&rarr;right</small></td>") in vs_base
    assert '<td class="">-1.00<br><small>[-4.00, +2.00]</small></td>' in vs_base  # interval holds 0; no McNemar
    assert '<td class="down">-2.00' in vs_blank
    # chosen metrics only
    write_html_report(tmp_path / "s.html", "run", table, predictions, intervals=INTERVALS, comparisons=COMPARISONS,
                      interval_metrics=["token_f1"])
    chosen = (tmp_path / "s.html").read_text()
    assert "<th>closed_accuracy</th>" not in chosen and "<th>token_f1</th>" in chosen
    # without intervals the page is as before
    write_html_report(tmp_path / "t.html", "run", table, predictions)
    assert "Confidence intervals" not in (tmp_path / "t.html").read_text()


def test_write_records(tmp_path):
    rows = [{"checkpoint": "base", "metric": "acc", "value": 50.0, "ci_low": None, "flips": None},
            {"checkpoint": "epoch_0", "metric": "acc", "value": np.float64(75.0), "ci_low": 60.0, "flips": 3}]
    columns = ["checkpoint", "metric", "value", "ci_low", "flips"]
    table = write_records(rows, columns, tmp_path / "i.csv", tmp_path / "i.json")
    assert (tmp_path / "i.csv").read_text() == (
        "checkpoint,metric,value,ci_low,flips\nbase,acc,50.0,,\nepoch_0,acc,75.0,60.0,3\n")  # a count stays an integer
    assert json.loads((tmp_path / "i.json").read_text())[1] == {"checkpoint": "epoch_0", "metric": "acc", "value": 75.0,
                                                               "ci_low": 60.0, "flips": 3}
    assert list(table.columns) == columns


def _generate_module():
    import importlib.util

    from helpers import REPO_ROOT

    spec = importlib.util.spec_from_file_location("medcap_recipe_generate_report", REPO_ROOT / "recipes" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _predictions_csv(path, right, images=10, per_image=4):
    """images x per_image yes/no questions; `right` = the ids answered right."""
    rows = [{"id": f"q{i}", "image": f"/data/img{i // per_image}.png", "question": f"Is there a spot {i}?",
             "reference": "yes", "answer_type": "CLOSED", "question_type": "PRES",
             "prediction": "yes" if i in right else "no"} for i in range(images * per_image)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)


def test_generate_report_only_compares_with_base_and_the_blank_run(tmp_path):
    """recipes/generate.py report_only=True: from predictions on disk (no model), each checkpoint
    minus base and minus {run_dir}/eval_blank's same checkpoint, in comparisons.csv and the report."""
    from omegaconf import OmegaConf

    run_dir, eval_dir = tmp_path / "run", tmp_path / "run" / "eval"
    _predictions_csv(eval_dir / "base/predictions.csv", right=set(range(0, 40, 4)))  # 10 of 40
    _predictions_csv(eval_dir / "epoch_0/predictions.csv", right=set(range(30)))  # 30 of 40
    _predictions_csv(run_dir / "eval_blank/epoch_0/predictions.csv", right=set(range(20)))  # 20 of 40
    (eval_dir / "metrics_by_epoch.json").write_text(json.dumps([
        {"checkpoint": "base", "epoch": None, "closed_accuracy": 1.0, "samples_per_second": 2.5},
        {"checkpoint": "epoch_0", "epoch": 0, "closed_accuracy": 2.0, "samples_per_second": 3.5}]))
    cfg = OmegaConf.create({"run_dir": str(run_dir), "output_dir": str(eval_dir), "report_only": True,
                            "plot_metrics": ["closed_accuracy"], "bootstrap": {"resamples": 500}})
    module = _generate_module()
    recipe = module.GenerationRecipe(cfg)
    recipe.rebuild_report()

    # rescored from the predictions (the stale 1.0 / 2.0 are replaced), the timing kept
    table = pd.read_csv(eval_dir / "metrics_by_epoch.csv")
    assert table["closed_accuracy"].tolist() == [25.0, 75.0] and table["samples_per_second"].tolist() == [2.5, 3.5]
    assert "medevalkit_accuracy" in table.columns
    saved = json.loads((eval_dir / "epoch_0/metrics.json").read_text())
    assert saved["closed_accuracy"] == 75.0 and saved["intervals"]["closed_accuracy"]["n"] == 40
    assert saved["bootstrap"]["resampled"] == "image" and saved["bootstrap"]["n_resamples"] == 500
    comparisons = pd.read_csv(eval_dir / "comparisons.csv")
    closed = comparisons[comparisons["metric"] == "closed_accuracy"].set_index("against")
    assert list(closed.index) == ["base", "blank images"] and set(closed["checkpoint"]) == {"epoch_0"}
    assert closed.loc["base", "difference"] == pytest.approx(50.0)  # 75 - 25
    assert closed.loc["base", "wrong_to_right"] == 22 and closed.loc["base", "right_to_wrong"] == 2
    assert closed.loc["blank images", "difference"] == pytest.approx(25.0)  # 75 - 50
    assert closed.loc["blank images", "right_to_wrong"] == 0 and closed.loc["blank images", "wrong_to_right"] == 10
    assert closed.loc["blank images", "resampled"] == "image" and closed.loc["blank images", "n_clusters"] == 10
    # the 10 gained questions sit on 3 of the 10 images: some resamples of whole images draw none
    assert 0.0 <= closed.loc["blank images", "ci_low"] <= 25.0 <= closed.loc["blank images", "ci_high"]
    assert closed.loc["base", "ci_low"] > 0 and closed.loc["base", "mcnemar_p"] < 0.001
    intervals = pd.read_csv(eval_dir / "intervals_by_epoch.csv")
    base_closed = intervals[(intervals["checkpoint"] == "base") & (intervals["metric"] == "closed_accuracy")].iloc[0]
    assert base_closed["value"] == pytest.approx(25.0) and base_closed["n"] == 40 and base_closed["n_clusters"] == 10
    page = (eval_dir / "report.html").read_text()
    assert "<h3>vs base</h3>" in page and "<h3>vs blank images</h3>" in page
    assert "resampling whole images (10 images for 40 questions" in page
    # a blank-image run is not compared with itself; compare_to={} switches the comparison off
    for extra in ({"blank_images": True}, {"compare_to": {}}):
        recipe = module.GenerationRecipe(OmegaConf.merge(cfg, extra))
        recipe.rebuild_report()
        against = set(pd.read_csv(eval_dir / "comparisons.csv")["against"])
        assert against == {"base"}
    # predictions of other questions are not compared (a warning), the rest still is
    _predictions_csv(run_dir / "eval_blank/epoch_0/predictions.csv", right=set(), images=5)
    module.GenerationRecipe(cfg).rebuild_report()
    assert set(pd.read_csv(eval_dir / "comparisons.csv")["against"]) == {"base"}
    with pytest.raises(FileNotFoundError, match="report_only=True but .*metrics_by_epoch.json does not exist"):
        module.GenerationRecipe(OmegaConf.merge(cfg, {"output_dir": str(tmp_path / "none")})).rebuild_report()
    with pytest.raises(ValueError, match="bootstrap: unknown key 'resample'"):
        module.GenerationRecipe(OmegaConf.merge(cfg, {"bootstrap": {"resample": "image"}}))
