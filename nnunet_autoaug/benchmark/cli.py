"""nnUNetv2_autoaug_benchmark: every trainer on one dataset, fold and budget, with stock nnU-Net commands.

    nnUNetv2_autoaug_benchmark --data ../shared/data/Task04_Hippocampus --protocol cpu \
        --baselines ../shared/data/baselines_AutoNNUnet --work bench_work

Runs are resumable: rerun the same command to skip finished trainers, continue interrupted ones (``--c``) and retry
crashed ones. The report (Markdown, CSV, PNG, JSON) is rewritten from all finished runs at the end of every call.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from nnunet_autoaug.benchmark import report
from nnunet_autoaug.benchmark.protocol import (
    PROTOCOLS,
    PUBLISHED_BUDGET,
    REGIMES,
    ensure_splits,
    nnunet_fold,
    planned_batch_size,
    plans_identifier,
)
from nnunet_autoaug.benchmark.runner import RETRAINER, Job, found_policy, job_folder, retraining, run_job
from nnunet_autoaug.pipeline import NnUNetTree, import_msd_task
from nnunet_autoaug.synthetic import DEFAULT_ID, make_synthetic_dataset

BASELINE_TRAINERS = ("nnUNetTrainerScheduled", "nnUNetTrainerNoDAScheduled", "nnUNetTrainerDA5Scheduled")
SEARCH_TRAINERS = ("nnUNetTrainerRandAug", "nnUNetTrainerASNG", "nnUNetTrainerASNGShared", "nnUNetTrainerASNGFast",
                   "nnUNetTrainerMetaAug", "nnUNetTrainerMetaAugFirstOrder", "nnUNetTrainerRL",
                   "nnUNetTrainerRLWarmStart")
# search, then retrain the found network (runner.SEARCH_STAGE); by default only where a GPU runs it: on CPU one
# supernet step costs about 13x nnU-Net's (docs/BENCHMARKS.md, section 6), days at the CPU protocol's budget
ARCHITECTURE_TRAINERS = ("nnUNetTrainerSCNAS",)


def default_trainers(protocol: str) -> list[str]:
    import nnunet_autoaug.trainers as ours

    architectures = ARCHITECTURE_TRAINERS if protocol == "gpu" else ()
    return [*BASELINE_TRAINERS, *(t for t in (*SEARCH_TRAINERS, *architectures) if hasattr(ours, t))]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="MSD task folder, e.g. Task04_Hippocampus")
    source.add_argument("--synthetic", action="store_true", help="the embedded synthetic dataset (for testing)")
    parser.add_argument("--work", type=Path, default=Path("benchmark_work"), help="created/reused; holds everything")
    parser.add_argument("--fold", type=int, default=0, choices=range(5))
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="cpu")
    parser.add_argument("--epochs", type=int, help="override the protocol's epochs")
    parser.add_argument("--iters", type=int, help="override the protocol's iterations per epoch")
    parser.add_argument("--val-iters", type=int, help="override the protocol's validation iterations per epoch")
    parser.add_argument("--batch-size", type=int, help="override the protocol's batch size (0: as planned)")
    parser.add_argument("--trainers", nargs="+", help="default: nnU-Net's baselines and all our search trainers "
                        "(nnUNetTrainerSCNAS, search plus retraining, only with --protocol gpu unless named here)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="independent training runs per trainer (runs 2.. get their own nnUNet_results_runN)")
    parser.add_argument("--retrain", action="store_true",
                        help=f"after each policy search with a search split (ASNG, MetaAug), train {RETRAINER} on all "
                        "of the regime's training cases with what it found, as its log recommends (reported as "
                        "'<search>+retrain')")
    parser.add_argument("--regimes", nargs="+", choices=REGIMES, default=list(REGIMES))
    parser.add_argument("--low-data-cases", type=int, default=20, help="training cases of the low-data regime")
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--baselines", type=Path, help="baselines_AutoNNUnet folder (published per-case results)")
    parser.add_argument("--report", type=Path, help="report folder (default: WORK/report)")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the report from finished runs")
    return parser.parse_args(argv)


def budget_of(args: argparse.Namespace):
    budget = PROTOCOLS[args.protocol]
    for field, value in (("epochs", args.epochs), ("iters", args.iters), ("val_iters", args.val_iters)):
        if value is not None:
            budget = replace(budget, **{field: value})
    if args.batch_size is not None:
        budget = replace(budget, batch_size=args.batch_size or None)
    return budget


def machine() -> str:
    from importlib.metadata import version

    import nnunetv2  # noqa: F401

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.platform()}, {os.cpu_count()} CPU cores, {device}; python {platform.python_version()}, "
            f"torch {torch.__version__}, nnunetv2 {version('nnunetv2')}, nnunet-autoaug {version('nnunet-autoaug')}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budget, work = budget_of(args), args.work.resolve()
    tree = NnUNetTree(work / "nnunet")
    start = time.time()
    say = lambda msg: print(f"[{(time.time() - start) / 60:6.1f} min] {msg}", flush=True)
    if args.synthetic:
        dataset_id = DEFAULT_ID
        if not list(tree.raw.glob(f"Dataset{dataset_id:03d}_*")):
            make_synthetic_dataset(tree.raw, dataset_id)
    else:
        try:
            dataset_id = import_msd_task(tree, args.data.resolve())
        except ValueError as error:
            sys.exit(f"--data: {error}")
    raw = next(tree.raw.glob(f"Dataset{dataset_id:03d}_*"))
    if not (tree.preprocessed / raw.name / f"nnUNetPlans_{args.configuration}").is_dir():
        say(f"planning and preprocessing {raw.name} ({args.configuration})")
        tree.plan_and_preprocess(dataset_id, (args.configuration,))
    name = tree.dataset_name(dataset_id)
    plans = plans_identifier(tree, name, args.configuration, budget.batch_size)
    try:
        splits = ensure_splits(tree, name, args.low_data_cases)
    except ValueError as error:
        sys.exit(str(error))
    trainers = args.trainers or default_trainers(args.protocol)
    ending = json.loads((raw / "dataset.json").read_text())["file_ending"]
    baseline = report.load_baseline(args.baselines, name, args.fold, ending)
    if baseline is not None and sorted(baseline) != sorted(splits[args.fold]["val"]):
        sys.exit(f"the published results of fold {args.fold} are on other cases than this run's validation cases: "
                 f"the folds differ, so no paired comparison is possible (check splits_final.json)")

    statuses: dict[str, list[dict]] = {}

    def visit(job: Job) -> dict | None:
        """Run (or, with --report-only, read) one job; its status joins the report."""
        if args.report_only:
            status = json.loads(job.status_file.read_text()) if job.status_file.exists() else None
        else:
            say(f"{job.regime} regime (nnU-Net fold {job.fold}, {len(splits[job.fold]['train'])} training cases): "
                f"{job.label}; log {job.work / 'log.txt'}")
            status = run_job(job, splits[job.fold]["val"])
            say(f"  {job.label}: {status['state']}")
        if status is not None:
            statuses.setdefault(job.regime, []).append(status)
        return status

    for regime in args.regimes:
        fold = nnunet_fold(regime, args.fold)
        for trainer, run in itertools.product(trainers, range(1, args.repeats + 1)):
            run_tree = tree if run == 1 else replace(tree, results_name=f"nnUNet_results_run{run}")
            job = Job(run_tree, dataset_id, args.configuration, plans, regime, fold, trainer, budget, args.device,
                      job_folder(work / "runs", regime, trainer, run), run)
            status = visit(job)
            policy = found_policy(job) if args.retrain and status and status["state"] == "done" else None
            if policy is not None:
                visit(retraining(job, policy))

    out = (args.report or work / "report").resolve()
    out.mkdir(parents=True, exist_ok=True)
    batch = planned_batch_size(tree, name, args.configuration)
    patches = budget.epochs * budget.iters * (budget.batch_size or batch)
    header = [
        f"## Benchmark: {name}, fold {args.fold}, {args.configuration}, protocol '{args.protocol}'", "",
        f"- Machine: {machine()}; device `{args.device}`.",
        (f"- Budget (identical for all trainers): {budget.describe(batch)}. This is a SHORT budget: the published "
         f"nnU-Net result is {PUBLISHED_BUDGET}, {1000 * 250 * batch / patches:.0f}x more training patches."),
        (f"- Regimes: full = the fold's training cases; lowdata = {args.low_data_cases} fixed training cases "
         f"(nnU-Net fold {nnunet_fold('lowdata', args.fold)} of splits_final.json); validation always on the fold's "
         f"{len(splits[args.fold]['val'])} validation cases, predicted with `nnUNetv2_predict` and scored with "
         "`nnUNetv2_evaluate_folder`."),
        "- `*Scheduled` trainers are the stock nnU-Net trainers of the same name with the budget's schedule.",
        ("- training cases: what the weights were trained on. Search trainers hold part of the regime's training "
         "cases out (shown as '+ N search') to rank their policies or architectures on; SCNAS's retraining uses all."),
        ("- train - val loss, last epoch: nnU-Net's logged training loss (on augmented patches) minus its validation "
         "loss: well below 0 when the network fits its training cases better than unseen ones (overfitting), near 0 "
         "or above when augmentation keeps it from fitting them."),
        (f"- s/iter: the median epoch of nnU-Net's log / iterations (validation batches and search work included). "
         f"A run whose training used under {report.SHARED_CPU_BELOW:.0%} of the machine's busy CPU time is marked "
         "'CPU shared': other work slowed it, so its timings are not cost figures, and the cost ratios are against "
         "the fastest unshared run of the reference."),
        ("- train wall h: the whole training, search work included; for a searched architecture (nnUNetTrainerSCNAS) "
         "its search plus the retraining of the found network, whose s/iter is shown."),
        *([f"- <search>+retrain: {RETRAINER} trained on all of the regime's training cases with what that search "
           "found, as the search's log recommends (ASNG trainers: the final theta, autoaug_theta.json, each sample "
           "drawing its own policy; MetaAug trainers: the learned distribution). Its train wall h is the "
           "retraining's alone: the search's row has the search's."] if args.retrain else []),
        (f"- Command: `nnUNetv2_autoaug_benchmark {shlex.join(argv if argv is not None else sys.argv[1:])}`; "
         "each run's exact commands are in its status.json."),
        ("- Paired tests: Wilcoxon signed-rank over validation cases of the per-case Dice (mean over classes); "
         "median paired difference shown. The p-values treat the cases as the sample, not the training run: two "
         "runs of one trainer differ too (`scripts/compare_runs.py` compares runs), so read small differences "
         "against that."),
    ]
    rows_per_regime, series, failed, summary, outcomes = {}, {}, [], {}, {}
    reference = "nnUNetTrainerScheduled" if "nnUNetTrainerScheduled" in trainers else trainers[0]
    (out / "dice_per_case.csv").unlink(missing_ok=True)
    for regime, regime_statuses in statuses.items():
        fold = nnunet_fold(regime, args.fold)
        val_cases = sorted(splits[fold]["val"])
        dice: dict[str, dict] = {}
        for s in regime_statuses:
            if s["state"] == "done":
                folder = job_folder(work / "runs", regime, s.get("job", s["trainer"]), s.get("run", 1))
                dice[report.label_of(s)] = report.per_case_dice(folder / "summary.json", ending)
            else:
                failed.append(s)
        rows_per_regime[regime] = report.build_rows(regime_statuses, dice, baseline, reference, val_cases,
                                                    train_cases=len(splits[fold]["train"]))
        report.write_csv(out / "dice_per_case.csv", dice, baseline, regime, val_cases)
        series[regime] = {**({report.PUBLISHED: report.case_mean(baseline, val_cases)} if baseline else {}),
                          **{t: report.case_mean(d, val_cases) for t, d in dice.items()}}
        summary[regime] = rows_per_regime[regime]
        outcomes[regime] = [*report.repeat_lines(dice, val_cases),
                            *report.search_outcomes(regime_statuses, regime, out)]
    if series:
        report.plot(out / "dice.png", series)
    text = report.markdown(header, rows_per_regime, reference, failed, outcomes)
    (out / "report.md").write_text(text)
    (out / "summary.json").write_text(json.dumps({"budget": budget.__dict__, "machine": machine(),
                                                  "regimes": summary}, indent=2, default=float))
    say(f"report: {out / 'report.md'}")
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
