"""Every figure of `specdec bench`, from one or more results.json files (`specdec plot`).

Figures (PNG, matplotlib's Agg backend), each skipped when its data is absent:
  acceptance.png     acceptance rate (and the per-token alpha, dashed) and mean acceptance length
                     against gamma, a line per temperature; gamma auto as a star at its mean count
  speedup.png        measured (solid) and predicted (dashed) speedup against gamma; HF assisted as markers,
                     HF's own schedules (default, heuristic) as horizontal lines; gamma auto as a star at
                     its mean count
  per_position.png   per-position acceptance, a line per gamma, a panel per temperature
  category.png       speedup per prompt category at each gamma, a panel per temperature
  batch.png          tokens/s against batch size, a line per method / gamma, a panel per temperature
Several files are overlaid; each series is labelled by a name derived from the file (its folder name,
or the file name when folders repeat).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..common.config import add_arguments as _add_arguments, config_from_args, option
from ..costmodel import AUTO
from .results import BenchRow, read_results

FIGURES = ("acceptance", "speedup", "per_position", "category", "batch")


@dataclass
class PlotConfig:
    results: tuple[str, ...] = option((), "one or more results.json files (or folders holding one)", positional=True)
    out: str | None = option(None, "output folder (default: the first file's folder)")
    names: tuple[str, ...] | None = option(None, "comma-separated labels, one per results file "
                                           "(default: each file's folder name)")

    def __post_init__(self):
        if not self.results:
            raise ValueError("pass at least one results.json (or a folder holding one)")
        if self.names is not None and len(self.names) != len(self.results):
            raise ValueError(f"--names has {len(self.names)} labels for {len(self.results)} results files")


def add_arguments(parser) -> None:
    _add_arguments(parser, PlotConfig)


def run(args) -> int:
    cfg = config_from_args(args, PlotConfig)
    paths = [_resolve(p) for p in cfg.results]
    written = plot_files(paths, cfg.out if cfg.out else paths[0].parent, cfg.names)
    for w in written:
        print(w)
    if not written:
        print("specdec plot: no figure had data to show")
    return 0


def _resolve(p) -> Path:
    path = Path(p)
    if path.is_dir():
        path = path / "results.json"
    if not path.exists():
        raise FileNotFoundError(f"results file {str(path)!r} does not exist; pass the results.json written by specdec bench")
    return path


@dataclass
class Dataset:
    """One results file as the figures see it."""
    name: str
    meta: dict
    runs: list          # [BenchRow]


def load_results(path, name: str = "") -> Dataset:
    meta, rows = read_results(_resolve(path))
    return Dataset(name, meta, rows)


def _out_dir(path) -> Path:
    """The figures' folder, created; a file in the way or a folder that cannot be written is one line."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create --out {out}: {e.strerror or e}") from None
    return out


def default_names(paths) -> list[str]:
    """The folder name of each file; the path relative to the common folder when folder names repeat."""
    paths = [Path(p).resolve() for p in paths]
    names = [p.parent.name or p.stem for p in paths]
    if len(set(names)) < len(names):
        names = [str(p.parent / p.stem) if p.stem != "results" else str(p.parent) for p in paths]
        names = [n[-40:] for n in names]
    return names


def _short(path_or_id) -> str:
    s = str(path_or_id or "?").rstrip("/")
    parts = s.split("/")
    return "/".join(parts[-2:]) if len(parts) > 1 else s


def _title(datasets, what: str) -> str:
    metas = [d.meta for d in datasets]
    pairs = sorted({f"{_short(m.get('target'))} <- {_short(m.get('draft'))}" for m in metas})
    devs = sorted({f"{m.get('device_name') or m.get('device', '?')} ({m.get('device', '?')}, {m.get('dtype', '?')})"
                   for m in metas})
    return f"{what}\n{'; '.join(pairs)} on {'; '.join(devs)}"


def _rows(data: Dataset, **match) -> list[BenchRow]:
    """The measured rows (no errors) whose fields equal `match`."""
    return [r for r in data.runs if r.error is None and r.tokens_per_s is not None
            and all(getattr(r, k) == v for k, v in match.items())]


def _fixed(rows) -> list[BenchRow]:
    """The rows of a fixed gamma, by gamma (gamma auto is drawn apart: it has no one gamma)."""
    return sorted((r for r in rows if isinstance(r.gamma, int)), key=lambda r: r.gamma)


def _auto(rows) -> BenchRow | None:
    return next((r for r in rows if r.gamma == AUTO and r.mean_gamma), None)


def _gamma_order(g):
    """Sort key of gammas: integers ascending, then auto, then None."""
    return (0, g) if isinstance(g, int) else (1, 0) if g == AUTO else (2, 0)


def _gamma_text(g) -> str:
    return "auto" if g == AUTO else f"gamma={g}"


def _smallest_bs(data, method="sd"):
    bss = sorted({r.batch_size for r in _rows(data, method=method, category="all")})
    return bss[0] if bss else None


def _temps(data, method="sd"):
    return sorted({r.temperature for r in _rows(data, method=method, category="all")})


def _gamma_axis(ax, datasets):
    """log2 x axis with a tick at each gamma measured (plain numbers, not powers of 2)."""
    from matplotlib.ticker import NullFormatter
    gs = sorted({r.gamma for d in datasets for r in d.runs if isinstance(r.gamma, int) and r.gamma > 0})
    ax.set_xscale("log", base=2)
    if gs:
        ax.set_xticks(gs, [str(g) for g in gs])
        ax.xaxis.set_minor_formatter(NullFormatter())


def _label(name, multi, text):
    return f"{name}: {text}" if multi else text


def plot_files(paths, out_dir, names=None) -> list[Path]:
    """Write every figure that has data; returns the written paths."""
    import matplotlib
    matplotlib.use("Agg")

    paths = [_resolve(p) for p in paths]
    names = names or default_names(paths)
    datasets = [load_results(p, n) for n, p in zip(names, paths)]
    out_dir = _out_dir(out_dir)
    written = []
    for fig_name in FIGURES:
        fn = globals()[f"_plot_{fig_name}"]
        path = out_dir / f"{fig_name}.png"
        if fn(datasets, path):
            written.append(path)
    return written


def _save(fig, path) -> bool:
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_acceptance(datasets, path) -> bool:
    import matplotlib.pyplot as plt
    multi = len(datasets) > 1
    series = []
    for data in datasets:
        name = data.name
        bs = _smallest_bs(data)
        for t in _temps(data):
            rows = _rows(data, method="sd", category="all", batch_size=bs, temperature=t)
            if rows:
                series.append((_label(name, multi, f"T={t:g}, bs={bs}"), _fixed(rows), _auto(rows)))
    if not series:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, rows, auto in series:
        g = [r.gamma for r in rows]
        line, = axes[0].plot(g, [r.acceptance_rate for r in rows], marker="o", label=label)
        color = line.get_color()
        if any(r.alpha is not None for r in rows):
            axes[0].plot(g, [r.alpha if r.alpha is not None else float("nan") for r in rows], ls="--",
                         marker="s", mfc="none", color=color, label=f"{label}: per-token alpha")
        axes[1].plot(g, [r.mean_accepted_length for r in rows], marker="o", color=color, label=label)
        if auto is not None:
            axes[0].plot([auto.mean_gamma], [auto.acceptance_rate], marker="*", ms=13, ls="none", color=color,
                         label=f"{label}: auto (at its mean gamma {auto.mean_gamma:.2f})")
            if auto.alpha is not None:
                axes[0].plot([auto.mean_gamma], [auto.alpha], marker="*", ms=13, mfc="none", ls="none", color=color)
            axes[1].plot([auto.mean_gamma], [auto.mean_accepted_length], marker="*", ms=13, ls="none", color=color,
                         label=f"{label}: auto")
    axes[0].set(xlabel="gamma (draft tokens per step)", ylabel="acceptance rate (accepted / drafted); alpha dashed",
                ylim=(0, 1.02))
    axes[1].set(xlabel="gamma (draft tokens per step)", ylabel="mean acceptance length (tokens / step)")
    for ax in axes:
        _gamma_axis(ax, datasets)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(_title(datasets, "Acceptance against gamma"), fontsize=10)
    return _save(fig, path)


def _plot_speedup(datasets, path) -> bool:
    import matplotlib.pyplot as plt
    multi = len(datasets) > 1
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    any_ = False
    for data in datasets:
        name = data.name
        bs = _smallest_bs(data)
        for t in _temps(data):
            measured = [r for r in _rows(data, method="sd", category="all", batch_size=bs, temperature=t)
                        if r.speedup is not None]
            rows, auto = _fixed(measured), _auto(measured)
            if not rows and auto is None:
                continue
            any_ = True
            g = [r.gamma for r in rows]
            line, = ax.plot(g, [r.speedup for r in rows], marker="o", label=_label(name, multi, f"specdec T={t:g}, bs={bs}"))
            color = line.get_color()
            pred = [r.predicted_speedup for r in rows]
            if any(p is not None for p in pred):
                ax.plot(g, [p if p is not None else float("nan") for p in pred], ls="--", marker="s", mfc="none",
                        color=color, label=_label(name, multi, f"predicted T={t:g}"))
            if auto is not None:
                ax.plot([auto.mean_gamma], [auto.speedup], marker="*", ms=14, ls="none", color=color,
                        label=_label(name, multi, f"specdec auto T={t:g} (at its mean gamma {auto.mean_gamma:.2f})"))
                if auto.predicted_speedup is not None:
                    ax.plot([auto.mean_gamma], [auto.predicted_speedup], marker="*", ms=14, mfc="none", ls="none",
                            color=color)
            hf = sorted([r for r in _rows(data, method="hf_assisted", category="all", temperature=t)
                         if r.speedup is not None and isinstance(r.gamma, int)], key=lambda r: r.gamma)
            if hf:
                ax.plot([r.gamma for r in hf], [r.speedup for r in hf], ls=":", marker="x", color=color,
                        label=_label(name, multi, f"HF assisted T={t:g}"))
            for method, ls, what in (("hf_assisted_default", (0, (1, 3)), "HF default (confidence 0.4)"),
                                     ("hf_assisted_heuristic", (0, (5, 3)), "HF heuristic schedule")):
                own = [r for r in _rows(data, method=method, category="all", temperature=t) if r.speedup is not None]
                if own:
                    ax.axhline(own[0].speedup, ls=ls, lw=1, color=color, label=_label(name, multi, f"{what} T={t:g}"))
    if not any_:
        plt.close(fig)
        return False
    ax.axhline(1.0, color="gray", lw=0.8)
    _gamma_axis(ax, datasets)
    ax.set(xlabel="gamma (draft tokens per step)", ylabel="speedup over plain decoding (tokens/s ratio)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(_title(datasets, "Measured and predicted speedup"), fontsize=10)
    return _save(fig, path)


def _plot_per_position(datasets, path) -> bool:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    multi = len(datasets) > 1
    temps = sorted({t for d in datasets for t in _temps(d)})
    if not temps:
        return False
    fig, axes = plt.subplots(1, len(temps), figsize=(5.5 * len(temps), 4.2), squeeze=False)
    any_ = False
    for ax, t in zip(axes[0], temps):
        for data in datasets:
            name = data.name
            bs = _smallest_bs(data)
            for r in sorted(_rows(data, method="sd", category="all", batch_size=bs, temperature=t),
                            key=lambda r: _gamma_order(r.gamma)):
                pp = r.per_position_acceptance
                if pp:
                    any_ = True
                    ax.plot(range(1, len(pp) + 1), pp, marker="*" if r.gamma == AUTO else "o",
                            label=_label(name, multi, _gamma_text(r.gamma)))
        ax.set(xlabel="draft position k", ylabel="P(k-th draft accepted)", ylim=(0, 1.02), title=f"T={t:g}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if not any_:
        plt.close(fig)
        return False
    fig.suptitle(_title(datasets, "Per-position acceptance"), fontsize=10)
    return _save(fig, path)


def _plot_category(datasets, path) -> bool:
    import matplotlib.pyplot as plt
    import numpy as np
    multi = len(datasets) > 1
    temps = sorted({t for d in datasets for t in _temps(d)})
    panels = []
    for t in temps:
        series = []
        for data in datasets:
            name = data.name
            bs = _smallest_bs(data)
            rows = [r for r in _rows(data, method="sd", batch_size=bs, temperature=t)
                    if r.category != "all" and r.speedup is not None]
            for g in sorted({r.gamma for r in rows}, key=_gamma_order):
                series.append((_label(name, multi, _gamma_text(g)),
                               {r.category: r.speedup for r in rows if r.gamma == g}))
        if series:
            panels.append((t, series))
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.4), squeeze=False)
    for ax, (t, series) in zip(axes[0], panels):
        cats = list(dict.fromkeys(c for _, d in series for c in d))
        x = np.arange(len(cats))
        w = 0.8 / len(series)
        for i, (label, d) in enumerate(series):
            ax.bar(x + i * w - 0.4 + w / 2, [d.get(c, np.nan) for c in cats], w, label=label)
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xticks(x, cats, rotation=20)
        ax.set(xlabel="prompt category", ylabel="speedup over plain decoding", title=f"T={t:g}")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    fig.suptitle(_title(datasets, "Speedup per category"), fontsize=10)
    return _save(fig, path)


def _plot_batch(datasets, path) -> bool:
    import matplotlib.pyplot as plt
    multi = len(datasets) > 1
    temps = sorted({r.temperature for d in datasets for r in _rows(d, category="all")})
    panels = []
    for t in temps:
        series = []
        for data in datasets:
            name = data.name
            rows = _rows(data, category="all", temperature=t)
            keys = sorted({(r.method, r.gamma) for r in rows if r.method in ("ar", "sd")},
                          key=lambda k: (k[0] != "ar", _gamma_order(k[1])))
            for m, g in keys:
                pts = sorted((r.batch_size, r.tokens_per_s) for r in rows if r.method == m and r.gamma == g)
                if len({b for b, _ in pts}) >= 2:
                    series.append((_label(name, multi, "plain" if m == "ar" else f"specdec {_gamma_text(g)}"), pts))
        if series:
            panels.append((t, series))
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (t, series) in zip(axes[0], panels):
        for label, pts in series:
            ax.plot([b for b, _ in pts], [v for _, v in pts], marker="o", label=label)
        bss = sorted({b for _, pts in series for b, _ in pts})
        ax.set_xscale("log", base=2)
        ax.set_xticks(bss, [str(b) for b in bss])
        ax.set(xlabel="batch size", ylabel="tokens/s (all rows of the batch)", title=f"T={t:g}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(_title(datasets, "Throughput against batch size"), fontsize=10)
    return _save(fig, path)
