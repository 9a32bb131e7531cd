"""nnUNetv2_autoaug_search_rl: the RL training-strategy search (Yang et al. 2019) on Ray Tune.

    nnUNetv2_autoaug_search_rl -d 4 -c 3d_fullres -f 0 -o search_out --num-samples 64 --concurrent 8 \
        --gpus-per-trial 1 --cpus-per-trial 6 --epochs 200 --pretrained .../checkpoint_final.pth

One machine needs no set-up (a local Ray starts in-process); a cluster: ``--address auto`` (or ray://...) on a node
of a running Ray cluster, with ``-o`` on a shared filesystem. A killed driver continues with ``-o search_out --resume``.
Outputs in ``-o``: best_strategy.json (train it with nnUNetTrainerStrategy), trials.csv, search_rl.png,
searcher_history.json, tune_state_snapshot.pkl (what --resume starts from); per-trial nnU-Net output under
trials/<trial_id>/.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

from nnunet_autoaug.rl.searchers import SEARCHERS
from nnunet_autoaug.rl.strategy import BEST_STRATEGY_FILE, DEFAULT_STRATEGY, DIMENSIONS, LR_MAPPINGS, LR_RANGE

ARGS_FILE, EXPERIMENT = "search_args.json", "rl_search"
SCHEDULE = {"epochs": "nnUNet_autoaug_epochs", "iters": "nnUNet_autoaug_iters", "val_iters": "nnUNet_autoaug_val_iters"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnUNetv2_autoaug_search_rl", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", required=True, help="search folder (shared storage on a cluster)")
    p.add_argument("-d", "--dataset", help="dataset id or name (preprocessed with nnUNetv2_plan_and_preprocess)")
    p.add_argument("-c", "--configuration", default="3d_fullres")
    p.add_argument("-f", "--fold", type=int, default=0)
    p.add_argument("-p", "--plans", default="nnUNetPlans")
    p.add_argument("--resume", action="store_true", help="continue the search in -o after the driver was killed "
                                                          "(all other options come from -o/search_args.json)")
    p.add_argument("--mode", choices=("search", "pbt"), default="search",
                   help="search: a searcher proposes strategies (default); pbt: population based training over the "
                        "same space (Ray cannot combine PBT with a searcher)")
    p.add_argument("--searcher", choices=SEARCHERS, default="ppo")
    p.add_argument("--num-samples", type=int, default=16, help="trials (strategies evaluated); PBT: population size")
    p.add_argument("--concurrent", type=int, default=2, help="trials running at the same time")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="e.g. nnUNet_n_proc_DA + 1")
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="fractional allowed, e.g. 0.5 (no memory "
                                                                      "isolation between trials sharing a GPU)")
    p.add_argument("--address", help="Ray cluster address (e.g. auto); default: start a local Ray")
    p.add_argument("--num-cpus", type=int, help="local Ray only: CPUs Ray may use (default: all)")
    p.add_argument("--epochs", type=int,
                   help="epochs per trial (default: the trainer's 1000; the paper fine-tunes 200)")
    p.add_argument("--iters", type=int, help="training iterations per epoch (default 250)")
    p.add_argument("--val-iters", type=int, help="nnU-Net pseudo-Dice iterations per epoch (default 50)")
    p.add_argument("--pretrained", help="checkpoint to fine-tune from in every trial (the paper's setting); "
                                        "default: train from scratch")
    p.add_argument("--search-fraction", type=float, default=0.2, help="share of the fold's training cases held out "
                                                                     "to score strategies (the reward)")
    p.add_argument("--asha", action="store_true", help="stop poor trials early (ASHA on the per-epoch search Dice)")
    p.add_argument("--pbt-interval", type=int, default=2, help="PBT: epochs between exploit/explore steps")
    p.add_argument("--max-failures", type=int, default=1, help="retries of a crashed trial; after that it is "
                                                              "recorded as failed and the search goes on")
    p.add_argument("--error-reward", type=float, help="reward fed to the controller for a failed trial (default: "
                                                      "failed trials teach the controller nothing)")
    p.add_argument("--lr-mapping", choices=LR_MAPPINGS, default="log",
                   help=f"unit value -> learning rate in [{LR_RANGE[0]:g}, {LR_RANGE[1]:g}] (paper: linear)")
    p.add_argument("--controller-lr", type=float, default=0.01, help="RMSprop lr of the controller (paper: 0.1)")
    p.add_argument("--seed", type=int, default=0)
    return p


def _load_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Path(args.output).resolve()
    args.output = str(out)
    if args.resume:
        saved = out / ARGS_FILE
        if not saved.is_file():
            parser.error(f"--resume: {saved} does not exist; start the search without --resume first")
        stored = json.loads(saved.read_text())
        stored.update(resume=True, output=str(out), address=args.address or stored.get("address"),
                      num_cpus=args.num_cpus or stored.get("num_cpus"))
        return argparse.Namespace(**stored)
    if args.dataset is None:
        parser.error("-d/--dataset is required (except with --resume)")
    if (out / ARGS_FILE).exists():
        parser.error(f"{out} already holds a search; continue it with --resume or choose another -o")
    if args.num_samples < 1 or args.concurrent < 1:
        parser.error("--num-samples and --concurrent must be >= 1")
    if args.pretrained and not Path(args.pretrained).is_file():
        parser.error(f"--pretrained {args.pretrained} does not exist")
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    args.dataset = maybe_convert_to_dataset_name(args.dataset)
    out.mkdir(parents=True, exist_ok=True)
    (out / ARGS_FILE).write_text(json.dumps(vars(args), indent=2))
    return args


def _setup(args: argparse.Namespace) -> dict:
    env = {k: os.environ[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_n_proc_DA", "nnUNet_compile",
                                      "nnUNet_def_n_proc", "nnUNet_autoaug_rl_crash_once") if k in os.environ}
    env.update({var: str(getattr(args, name)) for name, var in SCHEDULE.items() if getattr(args, name)})
    return {"dataset": args.dataset, "configuration": args.configuration, "fold": args.fold, "plans": args.plans,
            "trials_dir": str(Path(args.output) / "trials"), "env": env, "pretrained": args.pretrained,
            "search_fraction": args.search_fraction, "gpus": args.gpus_per_trial,
            "report_every_epoch": bool(args.asha)}


def run(args: argparse.Namespace) -> dict:
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")  # snapshot the searcher after every loop step
    t0 = time.time()
    import ray
    from ray import tune

    from nnunet_autoaug.rl.trial import pbt_trial, strategy_trial
    from nnunet_autoaug.rl.tune_searcher import StrategySearcher
    from nnunet_autoaug.rl.tune_snapshot import TuneStateSnapshot, put_back

    t_import = time.time()
    out, setup = Path(args.output), _setup(args)
    if args.address:
        ray.init(address=args.address, include_dashboard=False)
    else:
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    t_init = time.time()
    pbt = args.mode == "pbt"
    trainable = tune.with_resources(tune.with_parameters(pbt_trial if pbt else strategy_trial, setup=setup),
                                    {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial})
    storage = str(out / "ray")
    if args.resume:
        restored = put_back(out, Path(storage) / EXPERIMENT)  # Tune's own copy may be torn by the kill
        if restored:
            print(restored, flush=True)
        tuner = tune.Tuner.restore(str(Path(storage) / EXPERIMENT), trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        tuner = tune.Tuner(trainable, tune_config=_tune_config(args, StrategySearcher, tune),
                           param_space=_pbt_space(tune) if pbt else None,
                           run_config=tune.RunConfig(name=EXPERIMENT, storage_path=storage, verbose=1,
                                                     failure_config=tune.FailureConfig(max_failures=args.max_failures),
                                                     callbacks=[TuneStateSnapshot(str(out))]))
    results = tuner.fit()
    t_fit = time.time()
    summary = write_outputs(out, results, args)
    summary["timing_s"] = {"import_ray_tune": round(t_import - t0, 2), "ray_init": round(t_init - t_import, 2),
                           "fit": round(t_fit - t_init, 2)}
    (out / "search_summary.json").write_text(json.dumps(summary, indent=2))
    ray.shutdown()
    return summary


def _tune_config(args: argparse.Namespace, searcher_cls, tune):
    common = {"metric": "dice", "mode": "max", "num_samples": args.num_samples,
              "max_concurrent_trials": args.concurrent}
    if args.mode == "pbt":
        from ray.tune.schedulers import PopulationBasedTraining

        scheduler = PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=args.pbt_interval,
                                            hyperparam_mutations=_pbt_space(tune))
        return tune.TuneConfig(scheduler=scheduler, **common)
    searcher = searcher_cls(args.searcher, args.lr_mapping, args.seed, start=DEFAULT_STRATEGY.to_unit(args.lr_mapping),
                            log_dir=args.output, controller_lr=args.controller_lr, error_reward=args.error_reward)
    scheduler = None
    if args.asha:
        from ray.tune.schedulers import ASHAScheduler

        # one report per epoch, then the final one: max_t beyond the last epoch, so a full trial ends "completed"
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=(args.epochs or 1000) + 1, grace_period=1)
    return tune.TuneConfig(search_alg=searcher, scheduler=scheduler, **common)


def _pbt_space(tune) -> dict:
    return {**{d: tune.uniform(0.0, 1.0) for d in DIMENSIONS[:-1]}, "lr": tune.loguniform(*LR_RANGE)}


def write_outputs(out: Path, results, args: argparse.Namespace) -> dict:
    from nnunet_autoaug.rl.plots import plot_search
    from nnunet_autoaug.rl.trial import clipped_strategy
    from nnunet_autoaug.rl.tune_searcher import HISTORY_FILE

    history_file = out / HISTORY_FILE
    history = json.loads(history_file.read_text())["trials"] if history_file.is_file() else []
    order = {h["trial_id"]: i + 1 for i, h in enumerate(history)}
    rows = []
    for r in results:
        m, config = r.metrics or {}, r.config or {}
        rows.append({"trial_id": m.get("trial_id"), "completion_order": order.get(m.get("trial_id")),
                     "status": "error" if r.error else ("completed" if m.get("final") else "stopped"),
                     "dice": m.get("dice"), "epochs": m.get("epochs"),
                     "resumed_from_epoch": m.get("resumed_from_epoch"), "train_seconds": m.get("train_seconds"),
                     **{d: config.get(d) for d in DIMENSIONS},
                     "error": str(r.error).splitlines()[0][:200] if r.error else ""})
    rows.sort(key=lambda row: (row["completion_order"] is None, row["completion_order"] or 0))
    with open(out / "trials.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["trial_id"])
        writer.writeheader()
        writer.writerows(rows)
    finished = [row for row in rows if row["status"] == "completed" and row["dice"] is not None]
    summary = {"trials": len(rows), "completed": len(finished), "failed": sum(r["status"] == "error" for r in rows)}
    if finished:
        best = max(finished, key=lambda row: row["dice"])
        clipped_strategy(best).save(out / BEST_STRATEGY_FILE)  # PBT's explore step may leave [0, 1]
        summary.update(best_trial=best["trial_id"], best_dice=best["dice"])
    if history:
        plot_search([h["reward"] for h in history], [h["mean_after"] for h in history], list(DIMENSIONS),
                    str(out / "search_rl.png"),
                    title=f"strategy search ({args.searcher}): reward per trial and the searcher's mean strategy")
    elif args.mode == "pbt" and rows:
        plot_search([r["dice"] for r in rows], [clipped_strategy(r).to_unit(args.lr_mapping) for r in rows],
                    list(DIMENSIONS), str(out / "search_rl.png"), title="PBT: final Dice and strategy per trial")
    return summary


def main(argv: list[str] | None = None) -> None:
    args = _load_args(argv)
    summary = run(args)
    print(json.dumps(summary, indent=2))
    if not summary.get("completed"):
        sys.exit("no trial completed; see trials.csv and the Ray logs under " + str(Path(args.output) / "ray"))


if __name__ == "__main__":
    main()
