"""The systems document rendered: the README's Markdown table and a bar chart of RTFx."""

from __future__ import annotations

import os
from pathlib import Path


def _fmt(value, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _encoder_cell(r: dict) -> str:
    """ms a window, with the decoder's cross-attention K/V of one window (timed alone) in
    parentheses where known: part of max's encoder time, of the reference's decoder time."""
    cross = r.get("cross_kv_ms_per_window")
    encoder = _fmt(r["encoder_ms_per_window"], 0)
    return encoder if cross is None else f"{encoder} ({cross:.0f})"


def markdown_table(doc: dict) -> str:
    env, settings, audio = doc["environment"], doc["settings"], doc["audio"]
    lines = [
        "| backend | model | workload | RTFx | vs faster-whisper int8 | wall s (median / min) "
        "| encoder ms / window | decoder ms / token | tokens | WER | peak RSS MB | warm start s "
        "| cold compile s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    int8 = {
        (r["model"], r.get("workload", "short"), r["device"]): r["rtfx"]
        for r in doc["results"]
        if r["backend"] in ("faster-whisper-int8", "faster-whisper-int8-cuda")
    }
    for r in doc["results"]:
        workload = r.get("workload", "short")
        base = int8.get((r["model"], workload, r["device"]))
        ratio = f"{r['rtfx'] / base:.2f}" if base and r["rtfx"] else "–"
        lines.append(
            f"| {r['backend']} | {r['model']} | {workload} | {_fmt(r['rtfx'], 1)} | {ratio} | "
            f"{_fmt(r['wall_s_median'], 2)} / "
            f"{_fmt(r['wall_s_min'], 2)} | {_encoder_cell(r)} | "
            f"{_fmt(r['decoder_ms_per_token'], 1)} | {_fmt(r['tokens'], 0)} | "
            f"{_percent(r['wer'])} | {_fmt(r['peak_rss_mb'], 0)} | "
            f"{_fmt(r['warm_start_s'], 1)} | {_fmt(r.get('cold_compile_s'), 0)} |"
        )
    decoding = "greedy" if settings["beam_size"] == 1 else f"beam {settings['beam_size']}"
    versions = ", ".join(
        f"{name} {env[key]}"
        for name, key in [
            ("MAX", "max"),
            ("torch", "torch"),
            ("openai-whisper", "openai_whisper"),
            ("faster-whisper", "faster_whisper"),
            ("CTranslate2", "ctranslate2"),
        ]
        if env.get(key)
    )
    load = env.get("load_average")
    lines += [
        "",
        f"{env['cpu_model']}, {env['cores']} cores "
        f"({' '.join(env['cpu_features']) or 'no listed features'}"
        + "".join(f", {k}={v}" for k, v in (env.get("isa_variables") or {}).items())
        + f"); {versions}"
        + (f"; every row on the {env['allocator']} allocator" if env.get("allocator") else "")
        + f". short: {len(audio['files'])} clips, {audio['seconds']:.1f} s of audio "
        f"(WER over the {audio['referenced']} with a reference, {settings['wer_normalizer']})"
        + (
            f"; long: one {audio['workloads']['long']['seconds']:.0f}-s file of those clips "
            "with 1.5-10 s pauses"
            if "long" in audio.get("workloads", {})
            else ""
        )
        + ". "
        f"{decoding}, language {settings['language']}, "
        f"temperature {settings['temperature']:g} without fallback, "
        f"condition_on_previous_text {settings['condition_on_previous_text']}; "
        f"median of {settings['repeats']} pass(es) after a warm-up"
        + (
            ", the rows' passes taken in turn"
            if settings.get("pass_order", "").startswith("rows in turn")
            else ""
        )
        + "; "
        f"peak RSS per {settings['isolation']}"
        + (f"; load average at start {load[0]:.1f}" if load else "")
        + f". {doc['created']}."
        + (
            " Encoder ms (in parentheses): a window's cross-attention K and V, timed alone; max "
            "computes them in its encoder graph, the reference in its decoder's first step."
            if any(r.get("cross_kv_ms_per_window") for r in doc["results"])
            else ""
        ),
    ]
    if doc.get("errors"):
        lines.append("")
        lines += [
            f"- {e['backend']} × {e['model']} × {e.get('workload', 'short')}: failed ({e['error']})"
            for e in doc["errors"]
        ]
    return "\n".join(lines) + "\n"


def write_chart(doc: dict, path: str | os.PathLike) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = doc["results"]
    backends = list(dict.fromkeys(r["backend"] for r in results))
    models = list(dict.fromkeys(r["model"] for r in results))
    value = {
        (r["backend"], r["model"]): r["rtfx"]
        for r in results
        if r.get("workload", "short") == "short"
    }
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(backends) + 2), 4.2), dpi=120)
    for i, model in enumerate(models):
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(backends))]
        ys = [value.get((b, model)) or 0.0 for b in backends]
        bars = ax.bar(xs, ys, width * 0.92, label=model)
        for bar, y, b in zip(bars, ys, backends):
            if (b, model) in value:
                ax.annotate(
                    f"{y:.1f}",
                    (bar.get_x() + bar.get_width() / 2, y),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                    xytext=(0, 2),
                    textcoords="offset points",
                )
    ax.set_xticks(range(len(backends)), backends, rotation=20, ha="right")
    ax.set_ylabel("RTFx (audio s / wall s, higher is faster)")
    env = doc["environment"]
    ax.set_title(
        f"max-whisper bench: {doc['audio']['seconds']:.0f} s of audio, "
        f"{env['cpu_model']} × {env['cores']}",
        fontsize=9,
    )
    if models:
        ax.legend(title="model", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
