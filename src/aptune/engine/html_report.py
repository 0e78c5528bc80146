"""``RUN/report.html``: one self-contained page of how a run did.

Everything comes from the files a run already wrote (``config.yaml``, ``log.txt``,
``metrics.json``, ``per_class.json``, ``confusion.csv``, ``predictions.jsonl``,
``classes.txt``); plots are embedded as PNG data URIs and the page loads nothing else, so it
can be mailed or archived as it is. Sections whose files are missing (a run still training,
or trained without a final test) say so instead of failing.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
from pathlib import Path

import numpy as np
import yaml

from aptune.config import ConfigError
from aptune.engine.run_outputs import plot_confusion, plot_curves

#: config keys shown first (the rest are in a folded table)
MAIN_KEYS = (
    "model",
    "transfer_type",
    "finetune",
    "data_set",
    "data_path",
    "nb_classes",
    "num_frames",
    "sampling_rate",
    "input_size",
    "epochs",
    "batch_size",
    "lr",
    "opt",
    "weight_decay",
    "precision",
    "seed",
)
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1100px;color:#222;background:#fff;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;
margin-top:1.6em}table{border-collapse:collapse;margin:.5em 0;font-size:.92em}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f5f8}td.num{text-align:right;font-variant-numeric:tabular-nums}
.bar{display:inline-block;height:.8em;background:#4a7bd0;vertical-align:middle}
.bad{color:#b3261e}.ok{color:#1b6e2a}.muted{color:#777}img{max-width:100%;height:auto}
.kpi{display:inline-block;margin:.3em 1.2em .3em 0;padding:.5em 1em;background:#f3f5f8;
border-radius:6px}.kpi b{font-size:1.5em;display:block}
"""


def _e(value: object) -> str:
    return html.escape(str(value))


def png_data_uri(plot, *args) -> str:
    """Render one of the ``reports`` plot functions into a ``data:image/png`` URI."""
    buf = io.BytesIO()
    plot(*args, buf)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None


def _table(
    rows: list[list[object]], header: list[str] | None = None, num: set[int] = frozenset()
) -> str:
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=num' if i in num else ''}>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table>{head}{body}</table>"


def _missing(what: str) -> str:
    return f"<p class=muted>No {_e(what)} in this run folder yet.</p>"


def config_section(run: Path) -> str:
    path = run / "config.yaml"
    if not path.is_file():
        return _missing("config.yaml")
    cfg = yaml.safe_load(path.read_text()) or {}
    main = [[_e(k), _e(cfg[k])] for k in MAIN_KEYS if k in cfg]
    rest = [[_e(k), _e(v)] for k, v in sorted(cfg.items()) if k not in MAIN_KEYS]
    return (
        _table(main, ["flag", "value"]) + f"<details><summary>all {len(cfg)} flags"
        f"</summary>{_table(rest, ['flag', 'value'])}</details>"
    )


def parameters_section(metrics: dict | None) -> str:
    params = (metrics or {}).get("parameters")
    if not params:
        return _missing("parameter report (metrics.json is written after the final test)")
    rows = [
        [_e(g), f"{v['trainable']:,}", f"{v['total']:,}"]
        for g, v in params.get("groups", {}).items()
    ]
    rows.append(["<b>all</b>", f"<b>{params['trainable']:,}</b>", f"<b>{params['total']:,}</b>"])
    pct = params.get("trainable_percent_of_backbone", 0)
    return _table(rows, ["group", "trainable", "total"], {1, 2}) + (
        f"<p>trainable: <b>{pct:.3f}%</b> of the backbone's parameters</p>"
    )


def curves_section(run: Path) -> str:
    path = run / "log.txt"
    history = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                history.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash mid-write
    history = [h for h in history if "epoch" in h]
    if not history:
        return _missing("training log (log.txt)")
    img = png_data_uri(plot_curves, history)
    return f"<img alt='training and validation curves' src='{img}'>"


def notes_html(metrics: dict | None) -> str:
    """The run's warnings (a frozen random backbone) and the evaluation videos excluded by
    ``--eval_skip_unreadable``, above everything else: they change what the numbers mean."""
    metrics = metrics or {}
    lines = [f"<p class=bad><b>Warning:</b> {_e(w)}</p>" for w in metrics.get("warnings", [])]
    excluded = metrics.get("eval_excluded") or {}
    if excluded.get("count"):
        videos = "".join(f"<li>{_e(v)}</li>" for v in excluded.get("videos", []))
        lines.append(f"<p class=bad><b>{excluded['count']} unreadable validation/test "
                     "video(s) excluded from evaluation</b> (--eval_skip_unreadable):</p>"
                     f"<ul>{videos}</ul>")  # fmt: skip
    return "".join(lines)


def metrics_section(metrics: dict | None) -> str:
    if not metrics or "test" not in metrics:
        return _missing("test metrics (metrics.json)")
    t, best = metrics["test"], metrics.get("best_val", {})
    kpis = [
        ("test top-1", f"{t['top1']:.2f}%"),
        ("test top-5", f"{t['top5']:.2f}%"),
        ("test loss", f"{t['loss']:.4f}"),
        ("videos x views", f"{t['num_videos']} x {t['views_per_video']}"),
    ]
    if best.get("epoch", -1) >= 0:
        kpis.append(("best val top-1", f"{best['top1']:.2f}% (epoch {best['epoch']})"))
    if "train_time_s" in metrics:
        kpis.append(("train time", f"{metrics['train_time_s']:.0f} s"))
    return "".join(f"<span class=kpi>{_e(k)}<b>{_e(v)}</b></span>" for k, v in kpis)


def _confusion(run: Path) -> np.ndarray | None:
    path = run / "confusion.csv"
    if not path.is_file():
        return None
    conf = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    return conf if conf.ndim == 2 and conf.shape[0] == conf.shape[1] else None


def per_class_section(run: Path, names: list[str], conf: np.ndarray | None, shown: int = 25) -> str:
    per_class = _read_json(run / "per_class.json")
    if not per_class:
        return _missing("per-class accuracy (per_class.json)")
    support = conf.sum(axis=1) if conf is not None else None
    items = list(per_class.items())
    order = sorted(range(len(items)), key=lambda i: (items[i][1] is None, items[i][1] or 0))
    rows = []
    for i in order:
        name, acc = items[i]
        n = int(support[i]) if support is not None and i < len(support) else ""
        bar = f"<span class=bar style='width:{acc * 1.5:.0f}px'></span>" if acc is not None else ""
        rows.append([_e(name), "–" if acc is None else f"{acc:.1f}%", bar, n])
    header = ["class", "top-1", "", "test videos"]
    if len(rows) <= shown:
        return "<p>Worst first.</p>" + _table(rows, header, {1, 3})
    return (
        f"<p>Worst first: the {shown} worst of {len(rows)} classes.</p>"
        + _table(rows[:shown], header, {1, 3})
        + f"<details><summary>all {len(rows)} classes</summary>"
        + _table(rows, header, {1, 3})
        + "</details>"
    )


def confusion_section(conf: np.ndarray | None, names: list[str], top: int = 20) -> str:
    if conf is None:
        return _missing("confusion matrix (confusion.csv)")
    labels = names if len(names) == conf.shape[0] else [str(i) for i in range(conf.shape[0])]
    img = png_data_uri(plot_confusion, conf, labels if len(labels) <= 60 else None)
    off = conf.copy()
    np.fill_diagonal(off, 0)
    pairs = [(int(off[i, j]), i, j) for i, j in zip(*np.nonzero(off))]
    pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
    totals = conf.sum(axis=1)
    rows = [
        [_e(labels[i]), _e(labels[j]), n, f"{100 * n / max(totals[i], 1):.1f}%"]
        for n, i, j in pairs[:top]
    ]
    listing = (
        _table(rows, ["true class", "predicted as", "videos", "% of the class"], {2, 3})
        if rows
        else "<p class=ok>No confusions: every test video was right.</p>"
    )
    return f"<h3>Top confusions</h3>{listing}<img alt='confusion matrix' src='{img}'>"


def hardest_section(run: Path, limit: int = 20) -> str:
    path = run / "predictions.jsonl"
    if not path.is_file():
        return _missing("test predictions (predictions.jsonl)")
    preds = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def true_prob(p: dict) -> float:
        return next((prob for c, _, prob in p["top5"] if c == p["label"]), 0.0)

    preds.sort(key=lambda p: (p["correct"], true_prob(p)))
    rows = []
    for p in preds[:limit]:
        top5 = "<br>".join(
            f"{'<b>' if c == p['label'] else ''}{_e(n)} {100 * pr:.1f}%"
            f"{'</b>' if c == p['label'] else ''}"
            for c, n, pr in p["top5"]
        )
        mark = "<span class=ok>correct</span>" if p["correct"] else "<span class=bad>wrong</span>"
        rows.append(
            [_e(p.get("path")), _e(p["label_name"]), mark, f"{100 * true_prob(p):.1f}%", top5]
        )
    wrong = sum(not p["correct"] for p in preds)
    return (
        f"<p>{wrong} of {len(preds)} test videos wrong; the {len(rows)} with the lowest "
        "probability on their true class (bold in the top-5):</p>"
        + _table(rows, ["video", "true class", "", "p(true)", "top-5"], {3})
    )


def render_report(run: Path) -> str:
    """The whole page as one HTML string."""
    names_file = run / "classes.txt"
    names = (
        [n for n in names_file.read_text().splitlines() if n.strip()]
        if names_file.is_file()
        else []
    )
    metrics = _read_json(run / "metrics.json")
    conf = _confusion(run)
    if not names and conf is not None:
        names = [str(i) for i in range(conf.shape[0])]
    sections = [
        ("Test metrics", metrics_section(metrics)),
        ("Training and validation curves", curves_section(run)),
        ("Per-class accuracy", per_class_section(run, names, conf)),
        ("Confusion matrix", confusion_section(conf, names)),
        ("Hardest test videos", hardest_section(run)),
        ("Parameters", parameters_section(metrics)),
        ("Config", config_section(run)),
    ]
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    body = notes_html(metrics) + "".join(
        f"<section><h2>{_e(t)}</h2>{s}</section>" for t, s in sections
    )
    return (
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>aptune run "
        f"{_e(run.name)}</title><style>{CSS}</style></head><body><h1>aptune run "
        f"<code>{_e(run.name)}</code></h1><p class=muted>{_e(run.resolve())} · report "
        f"written {stamp}</p>{body}</body></html>\n"
    )


def write_report(run_dir: str | Path) -> Path:
    """Write ``RUN/report.html`` (atomically) and return its path."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ConfigError(f"{run}: no such run folder; give the output_dir of an aptune train run")
    path = run / "report.html"
    tmp = path.with_name(".report.html.tmp")
    tmp.write_text(render_report(run), encoding="utf-8")
    tmp.replace(path)
    return path
