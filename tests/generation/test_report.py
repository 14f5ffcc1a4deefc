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
