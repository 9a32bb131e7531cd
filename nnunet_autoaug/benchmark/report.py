"""Per-case Dice tables, paired statistics (Wilcoxon signed-rank), CSV, Markdown and a plot for one benchmark run."""
from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np

from nnunet_autoaug.benchmark.runner import search_cases, training_log

PUBLISHED = "published nnU-Net"
SHARED_CPU_BELOW = 0.9  # a training's share of the machine's busy CPU time below which its timings are flagged
SEARCH_PLOTS = ("autoaug_theta.png", "autoaug_meta_history.png", "autoaug_rl.png", "scnas_cells.png")


def label_of(status: dict) -> str:
    """The run's name in tables: its trainer, plus '#N' for repeated runs (statuses before repeats lack it)."""
    return status.get("label", status["trainer"])


def per_case_dice(summary_file: Path, file_ending: str) -> dict[str, dict[str, float]]:
    """case -> {class label: Dice} from an nnU-Net summary.json (NaN where reference and prediction are empty)."""
    summary = json.loads(summary_file.read_text())
    cases = {}
    for entry in summary["metric_per_case"]:
        case = Path(entry["reference_file"]).name.removesuffix(file_ending)
        cases[case] = {label: float(m["Dice"]) for label, m in entry["metrics"].items()}
    return cases


def case_mean(dice: dict[str, dict[str, float]], cases: list[str]) -> np.ndarray:
    return np.array([np.nanmean(list(dice[c].values())) for c in cases])


def paired(a: np.ndarray, b: np.ndarray) -> dict:
    """Median paired difference a - b and the two-sided Wilcoxon signed-rank p-value."""
    from scipy.stats import wilcoxon

    keep = ~(np.isnan(a) | np.isnan(b))
    diff = a[keep] - b[keep]
    p = 1.0 if not np.any(diff) else float(wilcoxon(a[keep], b[keep]).pvalue)
    return {"n": int(keep.sum()), "median_diff": float(np.median(diff)) if diff.size else math.nan, "p": p}


def load_baseline(baselines: Path | None, dataset_name: str, fold: int, file_ending: str) -> dict | None:
    if baselines is None:
        return None
    summary = baselines / "ConvolutionalEncoder" / dataset_name / f"fold_{fold}" / "validation_summary.json"
    return per_case_dice(summary, file_ending) if summary.exists() else None


def final_loss_gap(output_folder: Path) -> float | None:
    """Training minus validation loss in the last epoch (nnU-Net's log; the training loss is on augmented
    patches): well below 0 when the network fits its training cases better than unseen ones (overfitting), near 0
    or above when augmentation keeps it from fitting them."""
    logging = training_log(output_folder)
    if not logging or not logging.get("train_losses") or not logging.get("val_losses"):
        return None
    return float(logging["train_losses"][-1] - logging["val_losses"][-1])


def build_rows(statuses: list[dict], dice: dict[str, dict], baseline: dict | None, reference: str,
               val_cases: list[str], train_cases: int | None = None) -> list[dict]:
    """One row per trainer of a regime: training cases, class means, case mean, paired tests, costs.
    ``train_cases``: the regime's training cases, of which search trainers weight-train on fewer."""
    rows = []
    ref = case_mean(dice[reference], val_cases) if reference in dice else None
    # a CPU shared with other jobs only ever slows a run down, so the cost reference is the fastest of the
    # reference trainer's runs that had the machine to themselves (of all its runs if none is known to)
    runs = [s for s in statuses if label_of(s).split("#")[0] == reference and s.get("sec_per_iter")]
    undisturbed = [s for s in runs if not shared_cpu(s.get("train", {}).get("cpu_share"))] or runs
    ref_speed = min((s["sec_per_iter"] for s in undisturbed), default=None)
    pub = case_mean(baseline, val_cases) if baseline else None
    for status in statuses:
        name = label_of(status)
        row = {"trainer": name, "state": status["state"]}
        if train_cases is not None:
            held_out = search_cases(Path(status["output_folder"])) if status.get("output_folder") else 0
            row["cases"] = f"{train_cases - held_out} + {held_out} search" if held_out else str(train_cases)
        if status["state"] == "done" and status.get("output_folder"):
            row["loss_gap"] = final_loss_gap(Path(status["output_folder"]))
        train, search = status.get("train", {}), status.get("search", {})
        # a searched architecture's cost is its search plus its retraining
        row.update(train_wall_h=(train.get("wall_s", math.nan) + search.get("wall_s", 0)) / 3600,
                   peak_rss_mb=max((s["peak_rss_mb"] for s in (train, search) if s.get("peak_rss_mb")), default=None),
                   peak_gpu_mib=status.get("peak_gpu_mib"), sec_per_iter=status.get("sec_per_iter"),
                   cpu_share=train.get("cpu_share"))
        if ref_speed and row["sec_per_iter"]:  # same run, same machine: the ratio is the cost comparison
            row["cost_vs_reference"] = row["sec_per_iter"] / ref_speed
        if name in dice:
            labels = sorted(next(iter(dice[name].values())))
            for label in labels:
                row[f"dice_{label}"] = float(np.nanmean([dice[name][c][label] for c in val_cases]))
            mine = case_mean(dice[name], val_cases)
            row["dice_mean"] = float(np.nanmean(mine))
            if pub is not None:
                row["vs_published"] = paired(mine, pub)
            if ref is not None and name != reference:
                row["vs_reference"] = paired(mine, ref)
        rows.append(row)
    return rows


def shared_cpu(cpu_share: float | None) -> bool:
    """Whether other work took a noticeable part of the machine's CPU time while a run trained (unknown: no)."""
    return cpu_share is not None and cpu_share < SHARED_CPU_BELOW


def search_outcomes(statuses: list[dict], regime: str, out: Path) -> list[str]:
    """Markdown lines: what each finished search ended with (policy, strategy or genotype) and its plots, copied
    beside the report (the nnU-Net output folders live in the work folder, which is not what gets shared)."""
    from nnunet_autoaug.nas.genotype import GENOTYPE_FILE  # the architecture an SCNAS search found

    lines = []
    for status in statuses:
        if status["state"] != "done":
            continue
        folders = [Path(f) for f in (status.get("search_output_folder"), status["output_folder"]) if f]
        found = [folder / name for folder in folders for name in (*SEARCH_PLOTS, GENOTYPE_FILE)
                 if (folder / name).exists()]
        entry = _final_choice(folders[-1])
        if not (entry or found):
            continue
        entry = f"- {label_of(status)}" + (f": `{entry}`" if entry else "")
        if status.get("settings"):
            entry += " (set: " + ", ".join(f"`{k}={v}`" for k, v in status["settings"].items()) + ")"
        if status.get("search"):
            entry += (f"; search {status['search']['wall_s'] / 3600:.2f} h "
                      f"({_fmt(status.get('search_sec_per_iter'), 2)} s/iter), then retrained as "
                      f"`{status['configuration']}`")
        for path in found:
            copy = out / f"{regime}_{label_of(status).replace('#', '_run')}_{path.name}"
            shutil.copyfile(path, copy)
            entry += f" ([{path.stem}]({copy.name}))"
        lines.append(entry)
    return ["What each search ended with (policy: the most likely one; RL: the controller's mean strategy; SCNAS: "
            "the derived genotype) and its plots:", "", *lines, ""] if lines else []


def _final_choice(folder: Path) -> str | None:
    from nnunet_autoaug.policy import POLICY_FILE, Policy  # every policy trainer's final (most likely) policy
    from nnunet_autoaug.rl.strategy import STRATEGY_FILE, Strategy  # nnUNetTrainerRL's final (mean) strategy

    if (folder / POLICY_FILE).exists():
        policy = Policy.load(folder / POLICY_FILE)
        return policy.search_space.summary(policy)
    if (folder / STRATEGY_FILE).exists():
        return Strategy.load(folder / STRATEGY_FILE).summary()
    return None


def repeat_lines(dice: dict[str, dict], val_cases: list[str]) -> list[str]:
    """Markdown lines for trainers trained more than once: Dice mean per run, their spread, and the paired test of
    each later run against the first, i.e. how much training randomness alone moves the numbers above."""
    runs: dict[str, list[str]] = {}
    for label in dice:
        runs.setdefault(label.split("#")[0], []).append(label)
    lines = []
    for trainer, labels in runs.items():
        if len(labels) < 2:
            continue
        means = [float(np.nanmean(case_mean(dice[label], val_cases))) for label in labels]
        first = case_mean(dice[labels[0]], val_cases)
        tests = ", ".join(f"{label} vs run 1: {_test(paired(case_mean(dice[label], val_cases), first))}"
                          for label in labels[1:])
        lines.append(f"- {trainer}: Dice mean per run {', '.join(f'{m:.4f}' for m in means)}; mean "
                     f"{np.mean(means):.4f}, sd {np.std(means, ddof=1):.4f}; {tests}")
    return ["Repeated runs (independent trainings of one trainer):", "", *lines, ""] if lines else []


def write_csv(path: Path, dice: dict[str, dict], baseline: dict | None, regime: str, val_cases: list[str]) -> None:
    with open(path, "a", newline="") as f:
        writer = csv.writer(f)
        if f.tell() == 0:
            writer.writerow(["regime", "trainer", "case", "class", "dice"])
        sources = {**dice, **({PUBLISHED: baseline} if baseline else {})}
        for trainer, cases in sources.items():
            for case in val_cases:
                for label, value in cases[case].items():
                    writer.writerow([regime, trainer, case, label, f"{value:.6f}"])


def plot(path: Path, per_regime: dict[str, dict[str, np.ndarray]]) -> None:
    """Dice (mean over classes) per trainer, box plus one point per case; one panel per regime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(per_regime), 1, figsize=(11, 4.2 * len(per_regime)), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, (regime, series) in zip(axes[:, 0], per_regime.items()):
        names = list(series)
        values = [series[n][~np.isnan(series[n])] for n in names]
        ax.boxplot(values, showfliers=False, widths=0.5)
        for i, v in enumerate(values, start=1):
            ax.scatter(i + rng.uniform(-0.15, 0.15, v.size), v, s=8, alpha=0.5)
        ax.set_xticks(range(1, len(names) + 1), [n.replace("nnUNetTrainer", "") or "nnUNetTrainer" for n in names],
                      rotation=20, ha="right")
        ax.set_ylabel("Dice (mean over classes)")
        ax.set_title(f"regime: {regime}")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(value: object, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _speed(row: dict) -> str:
    share = row.get("cpu_share")
    flag = f" (CPU shared: {share:.0%} its own)" if shared_cpu(share) else ""
    return _fmt(row.get("sec_per_iter"), 2) + flag


def _test(result: dict | None) -> str:
    return "-" if not result else f"{result['median_diff']:+.4f} (p={result['p']:.2g}, n={result['n']})"


def markdown(header: list[str], rows_per_regime: dict[str, list[dict]], reference: str,
             failed: list[dict], outcomes: dict[str, list[str]] | None = None) -> str:
    lines = [*header, ""]
    for regime, rows in rows_per_regime.items():
        labels = sorted({k for r in rows for k in r if k.startswith("dice_") and k != "dice_mean"})
        lines += [f"### Regime: {regime}", "",
                  "| trainer | training cases | " + " | ".join(f"Dice {lb[5:]}" for lb in labels) +
                  " | Dice mean | vs published (median paired diff, Wilcoxon) |"
                  f" vs {reference} | train - val loss, last epoch | s/iter | s/iter vs {reference} | "
                  "train wall h | peak RSS MB | peak GPU MiB |",
                  "|" + "---|" * (len(labels) + 11)]
        for r in rows:
            lines.append(f"| {r['trainer']} | {r.get('cases', '-')} | " + " | ".join(_fmt(r.get(lb)) for lb in labels) +
                         f" | {_fmt(r.get('dice_mean'))} | {_test(r.get('vs_published'))} | "
                         f"{_test(r.get('vs_reference'))} | {_signed(r.get('loss_gap'))} | {_speed(r)} | "
                         f"{_ratio(r.get('cost_vs_reference'))} | {_fmt(r.get('train_wall_h'), 2)} | "
                         f"{_fmt(r.get('peak_rss_mb'), 0)} | {_fmt(r.get('peak_gpu_mib'), 0)} |")
        lines += ["", *(outcomes or {}).get(regime, [])]
    if failed:
        lines += ["### Failed runs (rerun to retry; log tails in each status.json)", ""]
        lines += [f"- {s['regime']} / {label_of(s)}: " + s.get("log_tail", "").strip().splitlines()[-1:][0]
                  if s.get("log_tail", "").strip() else f"- {s['regime']} / {label_of(s)}" for s in failed]
        lines.append("")
    return "\n".join(lines)
