"""Paper-style report over every answer file under an outputs tree.

    python -m evaluation_llama.report --outputs outputs

Answer files are found at ``<outputs>/<model_id>/<task>/<method>.jsonl`` (`paths.answer_folders`:
folders named after a task; anything else under ``<outputs>``, such as benchmark rows, is not
read); every method is compared with the baseline method (``vanilla`` unless --base-method says
otherwise) of the same model and task. Writes ``<out>/report.md`` (also printed; ``<out>`` is
``<outputs>`` unless --out says otherwise) with the main table — one row per model (and method),
per task the acceptance rate alpha, the mean accepted tokens per step M and the speedup, plus the
overall columns — and a detail table, and draws into ``<assets>`` (default ``<out>/plots``; never
a folder of the committed reference results):

* ``speedup_per_task.png``                     speedup per task (bars; one group per task)
* ``accept_lengths_<model>_<task>_<method>.png`` histogram of tokens accepted per step
* ``skip_layers_<model>_<task>_<method>.png``    the skipped layer set of the last answer
  (``stats["final_skip"]``) as a 2 x num_layers map (rows attention / MLP)

Missing pieces inside answer folders (no baseline, no statistics, unreadable files) are skipped
with a note.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a script: python evaluation_llama/report.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation_llama import metrics, paths  # noqa: E402
from evaluation_llama.answers import read_answer_file  # noqa: E402
from evaluation_llama.speed import CPU_NOTE, compare, fmt  # noqa: E402
from evaluation_llama.speed import devices as speed_devices  # noqa: E402
from model.errors import UserError  # noqa: E402

BASE_METHOD = "vanilla"
OVERALL = "overall"


@dataclass
class Cell:
    """Numbers of one (model, method, task) — or of the model's overall pool."""
    answers: int = 0
    speedup: Optional[float] = None
    acceptance_rate: Optional[float] = None
    mean_accept_length: Optional[float] = None
    tokens_per_second: Optional[float] = None
    base_tokens_per_second: Optional[float] = None
    identical_fraction: Optional[float] = None
    partial: bool = False


@dataclass
class Report:
    markdown: str
    rows: dict[tuple[str, str], dict[str, Cell]]
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "unnamed"


def discover(outputs: Path, notes: list[str]) -> dict[str, dict[str, dict[str, Path]]]:
    """{model: {task: {method: path}}} of ``outputs/<model>/<task>/<method>.jsonl``, over the
    answer folders only (`paths.answer_folders`)."""
    found: dict[str, dict[str, dict[str, Path]]] = {}
    for model, task, folder in paths.answer_folders(outputs):
        for path in sorted(folder.glob("*.jsonl")):
            if not path.is_file():
                continue
            if paths.is_shard(path):
                notes.append(f"ignored {path} (not named <method>.jsonl; merge shards first)")
                continue
            found.setdefault(model, {}).setdefault(task, {})[path.stem] = path
    return found


def _load(path: Path, notes: list[str], devices: Optional[set] = None) -> Optional[list[dict]]:
    try:
        header, records = read_answer_file(path, warn=lambda m: notes.append(m))
    except UserError as exc:
        notes.append(f"skipped {path}: {exc}")
        return None
    if not records:
        notes.append(f"skipped {path}: no answers")
        return None
    if devices is not None:
        devices.update(speed_devices(header, records))
    return records


def _cell_from_summary(summary: dict, partial: bool) -> Cell:
    return Cell(answers=summary["answers"], speedup=summary["speedup"],
                acceptance_rate=summary["acceptance_rate"],
                mean_accept_length=summary["mean_accept_length"],
                tokens_per_second=summary["tokens_per_second"],
                base_tokens_per_second=summary["base_tokens_per_second"],
                identical_fraction=summary["identical_fraction"], partial=partial)


def _cell_without_base(records: list[dict]) -> Cell:
    try:
        tps = metrics.mean_tokens_per_second(records)
    except UserError:
        tps = None
    return Cell(answers=len(records), acceptance_rate=metrics.acceptance_rate(records),
                mean_accept_length=metrics.mean_accept_length(records), tokens_per_second=tps)


# ----------------------------------------------------------------------------------------------
# plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_speedups(rows: dict[tuple[str, str], dict[str, Cell]], tasks: list[str], path: Path,
                  notes: list[str]) -> Optional[Path]:
    series = {f"{m} / {meth}": cells for (m, meth), cells in rows.items()
              if any(c.speedup is not None for c in cells.values())}
    if not series:
        notes.append("no speedup plot: no method has a baseline to compare with")
        return None
    plt = _pyplot()
    groups = tasks + [OVERALL]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(groups) * max(1, len(series)) ** 0.5), 3.8))
    for i, (label, cells) in enumerate(series.items()):
        xs, ys = [], []
        for g, task in enumerate(groups):
            cell = cells.get(task)
            if cell is not None and cell.speedup is not None:
                xs.append(g - 0.4 + width * (i + 0.5))
                ys.append(cell.speedup)
        bars = ax.bar(xs, ys, width=width, label=label)
        ax.bar_label(bars, labels=[f"{y:.2f}x" for y in ys], fontsize=7, padding=2)
    ax.axhline(1.0, color="gray", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("speedup over " + BASE_METHOD)
    ax.set_title("Speedup per task")
    ax.legend(fontsize=7)
    ax.margins(y=0.15)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_accept_hist(lengths: list[float], title: str, path: Path) -> Path:
    plt = _pyplot()
    top = int(max(lengths))
    fig, ax = plt.subplots(figsize=(5.0, 3.2))
    ax.hist(lengths, bins=[b - 0.5 for b in range(1, top + 2)], rwidth=0.85, color="tab:blue")
    ax.set_xticks(range(1, top + 1))
    ax.set_xlabel("tokens committed per step (bonus token included)")
    ax.set_ylabel("steps")
    mean = sum(lengths) / len(lengths)
    ax.set_title(f"{title}\nmean {mean:.2f} over {len(lengths)} steps", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _last_skip(records: list[dict]) -> Optional[dict]:
    for record in reversed(records):
        stats = record.get("stats")
        if isinstance(stats, dict) and isinstance(stats.get("final_skip"), dict):
            return stats
    return None


def plot_skip_map(stats: dict, title: str, path: Path, notes: list[str]) -> Optional[Path]:
    skip = stats["final_skip"]
    attn = [int(i) for i in skip.get("attn", []) or []]
    mlp = [int(i) for i in skip.get("mlp", []) or []]
    num_layers = stats.get("num_layers")
    if not isinstance(num_layers, int) or num_layers <= 0:
        if not attn and not mlp:
            notes.append(f"no skip map for {title}: stats has no num_layers and skips nothing")
            return None
        num_layers = max(attn + mlp) + 1
        notes.append(f"skip map for {title}: stats has no num_layers; drew {num_layers} layers")
    plt = _pyplot()
    grid = [[1 if i in set(attn) else 0 for i in range(num_layers)],
            [1 if i in set(mlp) else 0 for i in range(num_layers)]]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.22 * num_layers + 1.5), 1.9))
    ax.imshow(grid, aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks([0, 1], ["attention", "MLP"])
    step = 1 if num_layers <= 32 else 2
    ax.set_xticks(range(0, num_layers, step))
    ax.tick_params(axis="x", labelsize=6)
    ax.set_xticks([x - 0.5 for x in range(1, num_layers)], minor=True)
    ax.set_yticks([0.5], minor=True)
    ax.grid(which="minor", color="lightgray", linewidth=0.5)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("layer (black = skipped while drafting)")
    ax.set_title(f"{title}: skipped {len(attn)} attention + {len(mlp)} MLP of "
                 f"{num_layers} layers", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------
# tables


def _main_table(rows: dict[tuple[str, str], dict[str, Cell]], tasks: list[str]) -> list[str]:
    head = ["model", "method"]
    align = ["---", "---"]
    for task in tasks + [OVERALL]:
        head += [f"{task} α", f"{task} M", f"{task} speedup"]
        align += ["---:"] * 3
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for (model, method), cells in rows.items():
        row = [model, method]
        for task in tasks + [OVERALL]:
            c = cells.get(task)
            if c is None:
                row += ["-", "-", "-"]
            else:
                star = "*" if c.partial else ""
                row += [fmt(c.acceptance_rate, "%"), fmt(c.mean_accept_length, "f"),
                        fmt(c.speedup, "x") + (star if c.speedup is not None else "")]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _detail_table(rows: dict[tuple[str, str], dict[str, Cell]], tasks: list[str]) -> list[str]:
    lines = ["| model | method | task | answers | tok/s | base tok/s | speedup | M | α | "
             "identical outputs |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (model, method), cells in rows.items():
        for task in tasks + [OVERALL]:
            c = cells.get(task)
            if c is None:
                continue
            lines.append(
                f"| {model} | {method} | {task} | {c.answers}{' (partial)' if c.partial else ''}"
                f" | {fmt(c.tokens_per_second, 'tps')} | {fmt(c.base_tokens_per_second, 'tps')}"
                f" | {fmt(c.speedup, 'x')} | {fmt(c.mean_accept_length, 'f')}"
                f" | {fmt(c.acceptance_rate, '%')} | {fmt(c.identical_fraction, '%')} |")
    return lines


# ----------------------------------------------------------------------------------------------
# driver


def base_of(method: str, methods, base_method: str = BASE_METHOD) -> str:
    """The answer file `method` is compared with: for <name>-<setting> the baseline of the same setting,
    <base_method>-<setting>, when there is one (eval_codellama.sh's sampling runs: swift-t0.6 against vanilla-t0.6),
    else <base_method>. Such a baseline of a setting is a row of its own only where nothing is compared with it."""
    for i, ch in enumerate(method):
        if ch == "-" and f"{base_method}{method[i:]}" in methods and method != f"{base_method}{method[i:]}":
            return f"{base_method}{method[i:]}"
    return base_method


def build_report(outputs: str | os.PathLike, assets: Optional[str | os.PathLike] = None,
                 base_method: str = BASE_METHOD, out: Optional[str | os.PathLike] = None) -> Report:
    """Read every answer file under ``outputs``, draw the plots into ``assets`` (default
    ``<out>/plots``) and return the report for ``<out>/report.md`` (``out``: default
    ``outputs``; the markdown is not written here, `main` writes it)."""
    outputs = Path(outputs)
    out = Path(out) if out is not None else outputs
    assets = Path(assets) if assets is not None else paths.plots_dir(out)
    if not outputs.is_dir():
        raise UserError(f"outputs directory {outputs} does not exist")
    notes: list[str] = []
    devices: set[str] = set()  # where the answers were generated (a CPU report says what to expect there)
    files: list[Path] = []
    tree = discover(outputs, notes)
    tasks = sorted({t for per_model in tree.values() for t in per_model})
    rows: dict[tuple[str, str], dict[str, Cell]] = {}
    pooled: dict[tuple[str, str], tuple[list[dict], list[dict]]] = {}
    hist_files: list[Path] = []
    skip_files: list[Path] = []
    for model in sorted(tree):
        for task in sorted(tree[model]):
            methods = tree[model][task]
            bases = {m: base_of(m, methods, base_method) for m in methods}
            loaded: dict[str, Optional[list[dict]]] = {}
            used = set(bases.values())  # (base_of never names the method itself)
            row_methods = [m for m in sorted(methods) if m != base_method and m not in used]
            for base in sorted({bases[m] for m in row_methods} - set(methods)):
                notes.append(f"{model}/{task}: no {base}.jsonl, so no speedup")
            for method in row_methods:
                records = _load(methods[method], notes, devices)
                if records is None:
                    continue
                label = f"{model}/{task}/{method}"
                cell = None
                base = bases[method]
                if base in methods and base not in loaded:
                    loaded[base] = _load(methods[base], notes, devices)
                base_records = loaded.get(base)
                if base_records is not None:
                    try:
                        result = compare(records, base_records, allow_partial=True,
                                         name=str(methods[method]),
                                         base_name=str(methods[base]))
                    except UserError as exc:
                        notes.append(f"{label}: no speedup ({exc})")
                    else:
                        if result["partial"]:
                            notes.append(
                                f"{label}: compared only the questions both files answer "
                                f"({result['only_in_file']} only in {method}, "
                                f"{result['only_in_base']} only in {base})")
                        cell = _cell_from_summary(result[OVERALL], result["partial"])
                        mine, base = pooled.setdefault((model, method), ([], []))
                        common = {str(r["question_id"]) for r in records} & \
                            {str(r["question_id"]) for r in base_records}
                        mine += [r for r in records if str(r["question_id"]) in common]
                        base += [r for r in base_records if str(r["question_id"]) in common]
                if cell is None:
                    cell = _cell_without_base(records)
                rows.setdefault((model, method), {})[task] = cell
                # plots of this method and task
                lengths = metrics.accept_lengths(records)
                name = f"{safe_name(model)}_{safe_name(task)}_{safe_name(method)}.png"
                if lengths:
                    hist_files.append(plot_accept_hist(
                        lengths, label, assets / f"accept_lengths_{name}"))
                else:
                    notes.append(f"{label}: no accept_lengths, so no histogram")
                stats = _last_skip(records)
                if stats is not None:
                    drawn = plot_skip_map(stats, label, assets / f"skip_layers_{name}", notes)
                    if drawn:
                        skip_files.append(drawn)
                elif "swift" in method.lower():
                    notes.append(f"{label}: no stats.final_skip in the answers, so no layer map")
    for (model, method), (mine, base) in pooled.items():
        try:
            result = compare(mine, base, allow_partial=True)
        except UserError as exc:
            notes.append(f"{model}/{method}: no overall numbers ({exc})")
            continue
        partial = any(c.partial for c in rows[(model, method)].values())
        rows[(model, method)][OVERALL] = _cell_from_summary(result[OVERALL], partial)

    speed_plot = plot_speedups(rows, tasks, assets / "speedup_per_task.png", notes) if rows \
        else None
    files += ([speed_plot] if speed_plot else []) + hist_files + skip_files

    md = ["# SWIFT reproduction: speed report", ""]
    if not rows:
        md += ["No answer files with a method other than the baseline were found under "
               f"`{outputs}` (expected `<model>/<task>/<method>.jsonl`).", ""]
    else:
        md += [f"Speedup over `{base_method}` = mean per-answer tokens/s of the method divided "
               f"by that of `{base_method}`, on the questions both answer (a method run with a "
               f"setting, e.g. `swift-t0.6`, against `{base_method}` of the same setting, "
               f"`{base_method}-t0.6`, where there is one). α = acceptance rate "
               f"(accepted drafted tokens / drafted tokens); M = mean tokens committed per "
               f"decoding step, bonus token included. `{OVERALL}` pools the answers of all "
               f"tasks with a baseline. * = partial comparison.", ""]
        if "cpu" in devices:
            md += [CPU_NOTE, ""]
        md += _main_table(rows, tasks) + ["", "## Details", ""] + _detail_table(rows, tasks)
        md.append("")
    if files:
        md += ["## Figures", ""]
        for f in files:
            rel = os.path.relpath(f, out)
            md.append(f"![{f.stem}]({Path(rel).as_posix()})")
        md.append("")
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return Report(markdown="\n".join(md), rows=rows, files=files, notes=notes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation_llama.report",
        description="Build the paper-style speed table and plots from every answer file found "
                    "at <outputs>/<model_id>/<task>/<method>.jsonl (folders named after a task; "
                    "other folders are not read). Writes <out>/report.md (and prints it) and PNG "
                    "plots into <out>/plots; never into the committed reference folders.")
    parser.add_argument("--outputs", default="outputs",
                        help="root of the answer files (default: outputs; the committed reference "
                             "runs are under outputs/reference/<run>)")
    parser.add_argument("--out", default=None,
                        help="folder report.md is written to (default: the --outputs folder)")
    parser.add_argument("--assets", default=None,
                        help="directory the PNG plots are written to (default: <out>/plots)")
    parser.add_argument("--base-method", default=BASE_METHOD,
                        help=f"method every other method is compared with (default: "
                             f"{BASE_METHOD})")
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks instead of one-line error messages")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out if args.out is not None else args.outputs)
    assets = Path(args.assets) if args.assets is not None else paths.plots_dir(out)
    paths.refuse_reference(out, "pass --out with a folder of your own for report.md "
                                "(e.g. --out outputs/my-report)")
    paths.refuse_reference(assets, "pass --assets with a folder of your own for the plots")
    report = build_report(args.outputs, assets, base_method=args.base_method, out=out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(report.markdown, encoding="utf-8")
    print(report.markdown)
    print(f"wrote {out / 'report.md'} and {len(report.files)} plot(s) into {assets}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    from evaluation_llama.cli import run_cli

    run_cli(main)
