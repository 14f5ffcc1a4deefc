"""Evaluation reports: a metric table (CSV + JSON), plots, and one self-contained HTML page.

* :func:`write_metrics_table` - one row per checkpoint (``checkpoint``, ``epoch``, metrics...);
* :func:`plot_metrics_by_epoch` - each metric against epoch, the base model as a dashed line;
* :func:`plot_training_loss` - the loss of torchtune ``DiskLogger`` files against step;
* :func:`write_records` - a long table (e.g. the intervals or the comparisons) as CSV + JSON;
* :func:`write_html_report` - the metric table, the confidence intervals, the differences of every
  checkpoint to base and to other evaluations (e.g. blank images), the plots and a seeded sample
  of predictions with image thumbnails, in a single HTML file (images and plots embedded as
  base64, no other files).

Every file is written to a temporary name in its directory and renamed (atomic).
"""

import base64
import html
import io
import json
import math
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import PIL.Image  # noqa: E402

from medcap.data.schema import normalize_answer_type  # noqa: E402
from medcap.utils.atomic import atomic_write  # noqa: E402
from medcap.metrics.vqa import exact_match  # noqa: E402

BASE_EPOCH = -1  # the untuned ("base") checkpoint has epoch None/NaN or -1
PREDICTION_COLUMNS = ("image", "question", "reference", "prediction", "answer_type")
_STEP_LINE = re.compile(r"^Step (\d+) \| (.*)$")


def _json_value(value: Any) -> Any:
    """A JSON-ready value: numpy scalars as Python numbers, NaN as None."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_metrics_table(rows: List[Dict[str, Any]], path_csv: Path, path_json: Path) -> pd.DataFrame:
    """Write one row per checkpoint as CSV and JSON.

    Columns are ``checkpoint``, ``epoch`` and then every metric in order of first appearance.
    In the CSV a missing value (an epoch of None, a metric a row lacks, NaN) is an empty cell; in
    the JSON (a list of objects, every column in every object) it is ``null``.

    Args:
        rows (List[Dict[str, Any]]): ``{"checkpoint": name, "epoch": int or None, metric: value}``.
        path_csv (Path): CSV file to write.
        path_json (Path): JSON file to write.

    Returns:
        pandas.DataFrame: the table as written.

    Raises:
        ValueError: if a row lacks ``checkpoint`` or ``epoch`` (naming the row index).
    """
    for index, row in enumerate(rows):
        for key in ("checkpoint", "epoch"):
            if key not in row:
                raise ValueError(f"metrics row {index}: missing field {key!r} (row: {row})")
    columns: List[str] = ["checkpoint", "epoch"]
    for row in rows:
        columns += [key for key in row if key not in columns]
    table = pd.DataFrame(rows, columns=columns)
    table["epoch"] = table["epoch"].astype("Int64")  # integers with <NA> for the base checkpoint
    records = [{column: _json_value(row.get(column)) for column in columns} for row in rows]
    atomic_write(Path(path_csv), lambda temp: table.to_csv(temp, index=False))
    atomic_write(Path(path_json), lambda temp: Path(temp).write_text(json.dumps(records, indent=2) + "\n"))
    return table


def write_records(rows: List[Dict[str, Any]], columns: Sequence[str], path_csv: Path, path_json: Path) -> pd.DataFrame:
    """Write a long table (one record per row, the given columns in order) as CSV and JSON.

    A missing value is an empty cell in the CSV and ``null`` in the JSON (a list of objects).

    Returns:
        pandas.DataFrame: the table as written.
    """
    table = pd.DataFrame(rows, columns=list(columns))
    for column in columns:  # counts stay integers beside missing values (not 3.0)
        present = [row.get(column) for row in rows if row.get(column) is not None]
        if present and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in present):
            table[column] = table[column].astype("Int64")
    records = [{column: _json_value(row.get(column)) for column in columns} for row in rows]
    atomic_write(Path(path_csv), lambda temp: table.to_csv(temp, index=False))
    atomic_write(Path(path_json), lambda temp: Path(temp).write_text(json.dumps(records, indent=1) + "\n"))
    return table


def _save_figure(figure: "plt.Figure", path_png: Path) -> None:
    try:
        atomic_write(Path(path_png), lambda temp: figure.savefig(temp, format="png", dpi=120, bbox_inches="tight"))
    finally:
        plt.close(figure)


def plot_metrics_by_epoch(table: pd.DataFrame, metrics: Sequence[str], path_png: Path) -> None:
    """Plot each metric against epoch; the base checkpoint is a dashed line of the same colour.

    Args:
        table (pd.DataFrame): columns ``epoch`` and the metrics (``checkpoint`` optional); rows
            whose epoch is None/NaN or -1 are the base model (at most one is expected; the first
            is drawn).
        metrics (Sequence[str]): metric columns to draw.
        path_png (Path): PNG file to write.

    Raises:
        ValueError: if a metric is not a column of ``table``.
    """
    for metric in metrics:
        if metric not in table.columns:
            raise ValueError(f"metric {metric!r} is not a column of the table (columns: {', '.join(map(str, table.columns))})")
    epochs = pd.to_numeric(table["epoch"], errors="coerce").astype("float64")  # None / <NA> -> NaN
    is_base = (epochs.isna() | (epochs == BASE_EPOCH)).to_numpy()
    tuned = table[~is_base].assign(epoch=epochs[~is_base].astype(int)).sort_values("epoch")
    base = table[is_base]
    figure, axes = plt.subplots(figsize=(7, 4.2))
    for index, metric in enumerate(metrics):
        color = f"C{index % 10}"
        values = pd.to_numeric(tuned[metric], errors="coerce")
        axes.plot(tuned["epoch"], values, marker="o", color=color, label=f"{metric} (tuned)")
        if len(base):
            base_value = pd.to_numeric(base[metric], errors="coerce").iloc[0]
            if not math.isnan(base_value):
                axes.axhline(base_value, color=color, linestyle="--", linewidth=1.2, label=f"{metric} (base)")
    axes.set_xlabel("epoch")
    axes.set_ylabel("score")
    axes.set_title("Metrics by epoch: base (dashed) vs tuned")
    if len(tuned):
        axes.set_xticks(sorted(tuned["epoch"].unique()))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: never over a line
    _save_figure(figure, path_png)


def read_disk_logs(log_dir: Path) -> Dict[str, pd.DataFrame]:
    """Parse torchtune ``DiskLogger`` files ``log_*.txt`` (lines ``Step N | name:value ...``).

    Returns:
        Dict[str, pd.DataFrame]: file name -> a frame with ``step`` and one column per logged
        name (values as floats, NaN where a step did not log that name), in file-name order.

    Raises:
        FileNotFoundError: if ``log_dir`` holds no ``log_*.txt`` file.
    """
    paths = sorted(Path(log_dir).glob("log_*.txt"))
    if not paths:
        raise FileNotFoundError(f"{log_dir}: no torchtune DiskLogger file (log_*.txt)")
    logs = {}
    for path in paths:
        steps: Dict[int, Dict[str, float]] = {}
        for line in path.read_text(errors="replace").splitlines():
            match = _STEP_LINE.match(line.strip())
            if match is None:
                continue
            values = steps.setdefault(int(match.group(1)), {})
            for pair in match.group(2).split():
                name, _, value = pair.partition(":")
                try:
                    values[name] = float(value)
                except ValueError:
                    continue
        logs[path.name] = pd.DataFrame([{"step": step, **values} for step, values in sorted(steps.items())])
    return logs


def plot_training_loss(log_dir: Path, path_png: Path) -> None:
    """Plot ``loss`` against step for each ``log_*.txt`` of a torchtune ``DiskLogger`` directory.

    Each file (one per run; a resumed run writes a new one) is its own line.

    Raises:
        FileNotFoundError: if there is no log file.
        ValueError: if no file logs a ``loss``.
    """
    logs = read_disk_logs(log_dir)
    with_loss = {name: frame for name, frame in logs.items() if "loss" in frame.columns}
    if not with_loss:
        raise ValueError(f"{log_dir}: no 'loss' values in {', '.join(logs)}")
    figure, axes = plt.subplots(figsize=(7, 4.2))
    marker = "." if sum(len(frame) for frame in with_loss.values()) <= 50 else None
    for name, frame in with_loss.items():
        points = frame.dropna(subset=["loss"])
        axes.plot(points["step"], points["loss"], marker=marker, label=name)
    axes.set_xlabel("step")
    axes.set_ylabel("training loss")
    axes.set_title("Training loss")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    _save_figure(figure, path_png)


def _thumbnail_cell(image_path: str, thumbnail_px: int) -> str:
    if not image_path:
        return ""
    try:
        with PIL.Image.open(image_path) as image:
            thumbnail = image.convert("RGB")
            thumbnail.thumbnail((thumbnail_px, thumbnail_px))
    except (FileNotFoundError, IsADirectoryError):
        return f'<span class="missing" title="{html.escape(image_path)}">missing</span>'
    except (OSError, PIL.UnidentifiedImageError):
        return f'<span class="missing" title="{html.escape(image_path)}">unreadable</span>'
    buffer = io.BytesIO()
    thumbnail.save(buffer, format="JPEG", quality=85)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img src="data:image/jpeg;base64,{encoded}" alt="{html.escape(Path(image_path).name)}">'


def _verdict(answer_type: str, prediction: str, reference: str) -> str:
    if normalize_answer_type(answer_type) is None:
        return ""
    return "correct" if exact_match(prediction, reference) else "incorrect"


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else html.escape(str(value))


_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 2em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; text-align: left; }
th { background: #f2f2f2; }
td.correct { background: #e3f6e3; } td.incorrect { background: #fbe4e4; }
.missing { color: #a00; font-style: italic; }
img.plot { max-width: 48%; margin-right: 1%; }
td.up { background: #e3f6e3; } td.down { background: #fbe4e4; }
small { color: #555; }
"""


def _number(value: Any, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{float(value):+.2f}" if signed else f"{float(value):.2f}"


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _bootstrap_sentence(bootstrap: Optional[Mapping[str, Any]], paired: bool = False) -> str:
    if not bootstrap:
        return ""
    level = round(100 * float(bootstrap.get("confidence", 0.95)))
    unit = (f"resampling whole images ({bootstrap.get('n_images')} images for {bootstrap.get('n_questions')} questions: "
            "the questions of one image are not independent)" if bootstrap.get("resampled") == "image"
            else f"resampling questions ({bootstrap.get('n_questions')})")
    kind = "paired percentile bootstrap (the same resampled questions on both sides)" if paired else "percentile bootstrap"
    return f"{level}% {kind}, {unit}, {bootstrap.get('n_resamples')} resamples, seed {bootstrap.get('seed')}."


def _intervals_html(intervals: pd.DataFrame, metrics: Sequence[str], bootstrap: Optional[Mapping[str, Any]]) -> List[str]:
    checkpoints = list(dict.fromkeys(intervals["checkpoint"]))
    cells = {(row["checkpoint"], row["metric"]): row for _, row in intervals.iterrows()}
    header = "".join(f"<th>{html.escape(metric)}</th>" for metric in metrics)
    body = []
    for checkpoint in checkpoints:
        row_cells = []
        for metric in metrics:
            row = cells.get((checkpoint, metric))
            if row is None or not _present(row["value"]):
                row_cells.append("<td></td>")
                continue
            band = (f"[{_number(row['ci_low'])}, {_number(row['ci_high'])}]" if _present(row["ci_low"]) else "[no interval]")
            row_cells.append(f"<td>{_number(row['value'])}<br><small>{band} n={int(row['n'])}</small></td>")
        body.append(f"<tr><td>{html.escape(str(checkpoint))}</td>{''.join(row_cells)}</tr>")
    return [
        "<h2>Confidence intervals</h2>",
        f"<p>{html.escape(_bootstrap_sentence(bootstrap))} n = questions scored by the metric.</p>",
        f'<table class="intervals"><thead><tr><th>checkpoint</th>{header}</tr></thead><tbody>',
        *body,
        "</tbody></table>",
    ]


def _comparisons_html(comparisons: pd.DataFrame, metrics: Sequence[str], bootstrap: Optional[Mapping[str, Any]]) -> List[str]:
    parts = [
        "<h2>Differences</h2>",
        f"<p>Checkpoint minus the other run on the same questions, {html.escape(_bootstrap_sentence(bootstrap, paired=True))} "
        "For 0/1 metrics: McNemar's exact p and the questions that went right&rarr;wrong / wrong&rarr;right. "
        "Green or red: the interval excludes 0.</p>",
    ]
    header = "".join(f"<th>{html.escape(metric)}</th>" for metric in metrics)
    for against in dict.fromkeys(comparisons["against"]):
        subset = comparisons[comparisons["against"] == against]
        cells = {(row["checkpoint"], row["metric"]): row for _, row in subset.iterrows()}
        body = []
        for checkpoint in dict.fromkeys(subset["checkpoint"]):
            row_cells = []
            for metric in metrics:
                row = cells.get((checkpoint, metric))
                if row is None or not _present(row["difference"]):
                    row_cells.append("<td></td>")
                    continue
                low, high = row["ci_low"], row["ci_high"]
                band = f"[{_number(low, True)}, {_number(high, True)}]" if _present(low) else "[no interval]"
                verdict = ""
                if _present(low) and _present(high):
                    verdict = "up" if float(low) > 0 else "down" if float(high) < 0 else ""
                test = ""
                if _present(row.get("mcnemar_p")):
                    test = (f"<br><small>p={float(row['mcnemar_p']):.3g} &middot; {int(row['right_to_wrong'])}&rarr;wrong "
                            f"{int(row['wrong_to_right'])}&rarr;right</small>")
                row_cells.append(f'<td class="{verdict}">{_number(row["difference"], True)}<br><small>{band}</small>{test}</td>')
            body.append(f"<tr><td>{html.escape(str(checkpoint))}</td>{''.join(row_cells)}</tr>")
        parts += [
            f"<h3>vs {html.escape(str(against))}</h3>",
            f'<table class="comparisons"><thead><tr><th>checkpoint</th>{header}</tr></thead><tbody>',
            *body,
            "</tbody></table>",
        ]
    return parts


def _headline(table: Optional[pd.DataFrame], wanted: Optional[Sequence[str]]) -> List[str]:
    if table is None or not len(table):
        return []
    present = list(dict.fromkeys(table["metric"]))
    if wanted is not None:
        return [metric for metric in wanted if metric in present]
    return [metric for metric in present if "/" not in metric]


def write_html_report(
    path: Path,
    title: str,
    metrics_table: pd.DataFrame,
    predictions: pd.DataFrame,
    sample_size: int = 50,
    seed: int = 0,
    thumbnail_px: int = 128,
    plot_paths: Sequence[Path] = (),
    intervals: Optional[pd.DataFrame] = None,
    comparisons: Optional[pd.DataFrame] = None,
    bootstrap: Optional[Mapping[str, Any]] = None,
    interval_metrics: Optional[Sequence[str]] = None,
) -> None:
    """Write one self-contained HTML page: metric table, intervals, differences, plots, predictions.

    The sample is ``min(sample_size, len(predictions))`` rows drawn with ``seed`` (pandas'
    ``DataFrame.sample``), shown in their original order. Each row shows a JPEG thumbnail (at
    most ``thumbnail_px`` on a side; "missing" when the file does not exist, nothing for an empty
    path), the question, reference, prediction and, for CLOSED/OPEN rows, correct/incorrect by
    normalised exact match (:func:`medcap.metrics.exact_match`); caption rows leave it blank.
    All text is HTML-escaped.

    Args:
        path (Path): the HTML file to write.
        title (str): page title.
        metrics_table (pd.DataFrame): shown as is (e.g. from :func:`write_metrics_table`).
        predictions (pd.DataFrame): columns ``image`` (absolute path or ""), ``question``,
            ``reference``, ``prediction``, ``answer_type``.
        sample_size (int): predictions shown.
        seed (int): sampling seed.
        thumbnail_px (int): thumbnail size.
        plot_paths (Sequence[Path]): PNG files embedded after the tables.
        intervals (Optional[pd.DataFrame]): long table ``checkpoint, metric, value, ci_low,
            ci_high, n``: a "Confidence intervals" table (checkpoint x metric).
        comparisons (Optional[pd.DataFrame]): long table ``checkpoint, against, metric,
            difference, ci_low, ci_high`` (+ ``mcnemar_p, right_to_wrong, wrong_to_right`` for
            0/1 metrics): one "vs {against}" table per other run (base, blank images...).
        bootstrap (Optional[Mapping[str, Any]]): how the intervals were computed (resampled by
            image or question, counts, level, resamples, seed), said above the tables.
        interval_metrics (Optional[Sequence[str]]): metrics shown in those two tables (default:
            every metric key without a ``/`` breakdown).

    Raises:
        ValueError: if ``predictions`` lacks a column (naming it).
        FileNotFoundError: if a plot file does not exist.
    """
    for column in PREDICTION_COLUMNS:
        if column not in predictions.columns:
            raise ValueError(f"predictions: missing column {column!r} (required: {', '.join(PREDICTION_COLUMNS)})")
    plots = []
    for plot_path in plot_paths:
        if not Path(plot_path).is_file():
            raise FileNotFoundError(f"{plot_path}: plot file not found")
        encoded = base64.b64encode(Path(plot_path).read_bytes()).decode("ascii")
        plots.append(f'<img class="plot" src="data:image/png;base64,{encoded}" alt="{html.escape(Path(plot_path).name)}">')

    sample = predictions.sample(n=min(sample_size, len(predictions)), random_state=seed).sort_index()
    rows = []
    for index, record in sample.iterrows():
        verdict = _verdict(record["answer_type"], str(record["prediction"]), str(record["reference"]))
        image = record["image"] if isinstance(record["image"], str) else ""
        rows.append(
            f'<tr><td>{_text(index)}</td><td>{_thumbnail_cell(image, thumbnail_px)}</td>'
            f'<td>{_text(record["question"])}</td><td>{_text(record["reference"])}</td>'
            f'<td>{_text(record["prediction"])}</td><td>{_text(record["answer_type"])}</td>'
            f'<td class="{verdict}">{verdict}</td></tr>'
        )
    metrics_html = metrics_table.to_html(index=False, escape=True, na_rep="", float_format=lambda v: f"{v:.2f}")
    page = "\n".join([
        "<!DOCTYPE html>",
        f'<html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>',
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Metrics</h2>",
        metrics_html,
        *(_intervals_html(intervals, _headline(intervals, interval_metrics), bootstrap)
          if _headline(intervals, interval_metrics) else []),
        *(_comparisons_html(comparisons, _headline(comparisons, interval_metrics), bootstrap)
          if _headline(comparisons, interval_metrics) else []),
        *(["<h2>Plots</h2>", "<div>", *plots, "</div>"] if plots else []),
        f"<h2>Predictions: {len(sample)} of {len(predictions)} (seed {seed})</h2>",
        '<table class="predictions"><thead><tr><th>row</th><th>image</th><th>question</th><th>reference</th>'
        "<th>prediction</th><th>answer type</th><th>exact match</th></tr></thead><tbody>",
        *rows,
        "</tbody></table>",
        "</body></html>",
    ])
    atomic_write(Path(path), lambda temp: Path(temp).write_text(page, encoding="utf-8"))
