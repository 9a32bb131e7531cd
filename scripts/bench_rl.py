#!/usr/bin/env python
"""Costs of the RL strategy search (docs/RL.md, docs/BENCHMARKS.md).

Parts (``--parts``, default ``synthetic,engine``):

* ``synthetic``: PPO controller vs hill climbing vs random search on a quadratic reward with a known optimum
  (no nnU-Net): best reward found and mean reward of the last proposals, averaged over seeds.
* ``engine``: Ray Tune's own costs: ``import ray.tune``, ``ray.init`` (local), ``ray.shutdown``, and the scheduling
  overhead per trial with our Searcher and trials that only sleep (suggest -> trial start, trial end -> next start);
  also what the search CLI's state snapshot callback (``rl.tune_snapshot``) costs the driver per Tune step, beside
  Tune's own save of its state.
* ``nnunet``: one tiny nnU-Net trial in-process without Ray (training time), then the same trial settings through the
  search CLI (needs nnUNet_raw/_preprocessed set and ``--dataset``): overhead per trial = Ray wall per trial slot
  minus training time.

    OMP_NUM_THREADS=1 python scripts/bench_rl.py --json /tmp/bench_rl.json
    python scripts/bench_rl.py --parts nnunet --dataset 990 --configuration 2d --epochs 2 --iters 2
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def synthetic(seeds: int, budget: int, concurrent: int) -> dict:
    from nnunet_autoaug.rl.searchers import SEARCHERS, make_searcher, run_synthetic
    from nnunet_autoaug.rl.strategy import DIMENSIONS

    dims, out = len(DIMENSIONS), {}
    for name in SEARCHERS:
        best, last, t0 = [], [], time.time()
        for seed in range(seeds):
            optimum = np.random.RandomState(1000 + seed).uniform(0.1, 0.9, dims)
            history = run_synthetic(make_searcher(name, dims, seed=seed),
                                    lambda u, o=optimum: 1 - np.mean((u - o) ** 2), budget, concurrent,
                                    torch.Generator().manual_seed(seed), noise=0.01)
            rewards = np.array([r for _, r in history])
            best.append(rewards.max())
            last.append(rewards[-8:].mean())
        out[name] = {"best_mean": round(float(np.mean(best)), 4), "best_std": round(float(np.std(best)), 4),
                     "last8_mean": round(float(np.mean(last)), 4), "seconds": round(time.time() - t0, 2)}
        print(f"synthetic {name:16s} best {out[name]['best_mean']:.4f} +- {out[name]['best_std']:.4f}  "
              f"last-8 mean {out[name]['last8_mean']:.4f}", flush=True)
    return {"seeds": seeds, "budget": budget, "concurrent": concurrent, "optimum_reward": 1.0, "searchers": out}


def _sleep_trial(config: dict) -> None:
    from ray import tune

    start = time.time()
    time.sleep(config["_sleep"])
    tune.report({"dice": 1 - abs(config["rotation"] - 0.7), "final": True, "start": start,
                 "suggested": config["_suggested"]})


def engine(trials: int, concurrent: int, sleep: float, num_cpus: int) -> dict:
    t0 = time.time()
    import ray
    from ray import tune

    from nnunet_autoaug.rl.tune_searcher import StrategySearcher
    from nnunet_autoaug.rl.tune_snapshot import SNAPSHOT_FILE, TuneStateSnapshot

    t_import = time.time() - t0

    class TimedSearcher(StrategySearcher):
        def suggest(self, trial_id: str) -> dict | None:
            config = super().suggest(trial_id)
            return None if config is None else {**config, "_suggested": time.time(), "_sleep": sleep}

    class TimedSnapshot(TuneStateSnapshot):  # the search CLI's callback, timed (it runs at every Tune step)
        steps, seconds, writes = 0, 0.0, 0

        def on_step_end(self, iteration: int, trials: list, **info) -> None:
            start, before = time.perf_counter(), self._signature
            super().on_step_end(iteration, trials, **info)
            self.steps, self.seconds = self.steps + 1, self.seconds + time.perf_counter() - start
            self.writes += self._signature != before

    from ray.tune.execution.tune_controller import TuneController

    tune_saves = {"count": 0, "seconds": 0.0}  # Tune's own save of its state, every step (TUNE_GLOBAL_CHECKPOINT_S=0)
    untimed_save = TuneController.save_to_dir

    def timed_save(controller: TuneController) -> None:
        start = time.perf_counter()
        untimed_save(controller)
        tune_saves["count"] += 1
        tune_saves["seconds"] += time.perf_counter() - start

    TuneController.save_to_dir = timed_save
    t0 = time.time()
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    t_init = time.time() - t0
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
        t0 = time.time()
        results = tune.Tuner(tune.with_resources(_sleep_trial, {"cpu": 1}),
                             tune_config=tune.TuneConfig(search_alg=TimedSearcher("ppo", log_dir=tmp), metric="dice",
                                                         mode="max", num_samples=trials,
                                                         max_concurrent_trials=concurrent),
                             run_config=tune.RunConfig(storage_path=tmp, name="bench", verbose=0,
                                                       callbacks=[snapshot := TimedSnapshot(tmp)])).fit()
        t_fit = time.time() - t0
        snapshot_bytes = (Path(tmp) / SNAPSHOT_FILE).stat().st_size
    t0 = time.time()
    ray.shutdown()
    t_shutdown = time.time() - t0
    latency = [r.metrics["start"] - r.metrics["suggested"] for r in results if r.metrics]
    slots = trials / concurrent
    out = {"import_ray_tune_s": round(t_import, 2), "ray_init_s": round(t_init, 2),
           "ray_shutdown_s": round(t_shutdown, 2), "trials": trials, "concurrent": concurrent, "trial_sleep_s": sleep,
           "fit_wall_s": round(t_fit, 2), "overhead_per_trial_slot_s": round(t_fit / slots - sleep, 2),
           "suggest_to_start_median_s": round(statistics.median(latency), 2) if latency else None,
           "snapshot": {"tune_steps": snapshot.steps, "writes": snapshot.writes, "bytes": snapshot_bytes,
                        "seconds": round(snapshot.seconds, 3),
                        "ms_per_step": round(1000 * snapshot.seconds / max(snapshot.steps, 1), 3),
                        "share_of_fit_wall": round(snapshot.seconds / t_fit, 4)},
           "tune_state_saves": {"count": tune_saves["count"], "seconds": round(tune_saves["seconds"], 3),
                                "ms_per_save": round(1000 * tune_saves["seconds"] / max(tune_saves["count"], 1), 3),
                                "share_of_fit_wall": round(tune_saves["seconds"] / t_fit, 4)}}
    print("engine", json.dumps(out), flush=True)
    return out


def nnunet(dataset: str, configuration: str, epochs: int, iters: int, trials: int, concurrent: int,
           num_cpus: int) -> dict:
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    from nnunet_autoaug.pipeline import console_script
    from nnunet_autoaug.rl.strategy import DEFAULT_STRATEGY
    from nnunet_autoaug.rl.trial import train_strategy

    env = {"nnUNet_autoaug_epochs": str(epochs), "nnUNet_autoaug_iters": str(iters), "nnUNet_autoaug_val_iters": "1"}
    setup = {"dataset": maybe_convert_to_dataset_name(dataset), "configuration": configuration, "fold": 0,
             "plans": "nnUNetPlans", "env": env, "search_fraction": 0.2, "gpus": 0}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        result = train_strategy(DEFAULT_STRATEGY, Path(tmp) / "direct", setup)
        direct_wall = time.time() - t0
        out_dir = Path(tmp) / "search"
        t0 = time.time()
        subprocess.run([console_script("nnUNetv2_autoaug_search_rl"), "-d", str(dataset), "-c", configuration,
                        "-o", str(out_dir), "--num-samples", str(trials), "--concurrent", str(concurrent),
                        "--num-cpus", str(num_cpus), "--epochs", str(epochs), "--iters", str(iters), "--val-iters",
                        "1"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        cli_wall = time.time() - t0
        summary = json.loads((out_dir / "search_summary.json").read_text())
        train_s = [json.loads(p.read_text())["train_seconds"] for p in (out_dir / "trials").glob("*/result.json")]
    slots = trials / concurrent
    out = {"dataset": dataset, "configuration": configuration, "epochs": epochs, "iters": iters,
           "direct_trial_wall_s": round(direct_wall, 2), "direct_train_s": result["train_seconds"],
           "search_cli_wall_s": round(cli_wall, 2), "search_timing_s": summary["timing_s"],
           "trials": trials, "concurrent": concurrent, "trial_train_s_median": round(statistics.median(train_s), 2),
           "wall_per_trial_slot_s": round(summary["timing_s"]["fit"] / slots, 2)}
    out["overhead_per_trial_slot_s"] = round(out["wall_per_trial_slot_s"] - out["trial_train_s_median"], 2)
    print("nnunet", json.dumps(out), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="synthetic,engine")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--budget", type=int, default=48)
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--concurrent", type=int, default=2)
    p.add_argument("--sleep", type=float, default=1.0)
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--dataset", default="990")
    p.add_argument("--configuration", default="2d")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    parts = args.parts.split(",")
    report = {"host": platform.node(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
              "torch": torch.__version__, "load_avg": os.getloadavg()}
    try:
        import ray

        report["ray"] = ray.__version__
    except ImportError:
        report["ray"] = None
    if "synthetic" in parts:
        report["synthetic"] = synthetic(args.seeds, args.budget, 4)
    if "engine" in parts:
        report["engine"] = engine(args.trials, args.concurrent, args.sleep, args.num_cpus)
    if "nnunet" in parts:
        report["nnunet"] = nnunet(args.dataset, args.configuration, args.epochs, args.iters, args.trials,
                                  args.concurrent, args.num_cpus)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
