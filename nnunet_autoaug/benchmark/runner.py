"""Train, predict and evaluate one trainer with the stock nnU-Net commands; the outcome goes to a status file.

A finished trainer is skipped on a rerun; an interrupted one continues with ``--c``; a crashed one is recorded
with the end of its log (and retried on the next run). A searched architecture (SCNAS) is two trainings: the
search on the base configuration, whose genotype is registered as a configuration of this job's own, then the
retraining of that configuration, which is predicted and evaluated like any other trainer. A policy search's
result can be retrained on all training cases with ``nnUNetTrainerPolicy`` as a job of its own (``retraining``).
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from nnunet_autoaug.benchmark.protocol import Budget
from nnunet_autoaug.nas.genotype import GENOTYPE_FILE
from nnunet_autoaug.pipeline import NnUNetTree, console_script
from nnunet_autoaug.policy import POLICY_FILE
from nnunet_autoaug.settings import POLICY_VAR, SCHEDULE_VARS

SEARCH_STAGE = {"nnUNetTrainerSCNAS": "nnUNetTrainerSCNASSearch"}  # trainer -> the search that must run first
PEAK_GPU_MEMORY_FILE = "autoaug_peak_gpu_memory.json"  # written by every benchmarked trainer on a GPU (EnvSchedule)
RETRAINER = "nnUNetTrainerPolicy"  # trains a policy file on all of a fold's training cases


@dataclass
class Job:
    tree: NnUNetTree
    dataset_id: int
    configuration: str
    plans: str
    regime: str
    fold: int  # the nnU-Net fold index that is trained
    trainer: str
    budget: Budget
    device: str
    work: Path  # this job's folder: status, logs, predictions
    run: int = 1  # repeated runs of one trainer (nnU-Net seeds nothing, so each is an independent training)
    retrains: str | None = None  # the search trainer whose found policy this job trains on all training cases

    @property
    def name(self) -> str:
        """The job's folder name in the work folder (before any run number)."""
        return self.trainer if self.retrains is None else f"{self.retrains}__retrain"

    @property
    def label(self) -> str:
        return run_label(self.trainer if self.retrains is None else f"{self.retrains}+retrain", self.run)

    @property
    def status_file(self) -> Path:
        return self.work / "status.json"

    @property
    def search_trainer(self) -> str | None:
        return SEARCH_STAGE.get(self.trainer)

    @property
    def train_configuration(self) -> str:
        """What the trainer trains and is predicted with: for a searched architecture, the configuration its own
        search registered (one per fold and run, so that regimes and repeats never overwrite each other's)."""
        if self.search_trainer is None:
            return self.configuration
        return f"{self.configuration}_scnas_fold{self.fold}" + ("" if self.run == 1 else f"_run{self.run}")

    @property
    def output_folder(self) -> Path:
        return self.tree.output_folder(self.dataset_id, self.trainer, self.train_configuration, self.fold, self.plans)

    @property
    def search_output_folder(self) -> Path | None:
        return None if self.search_trainer is None else \
            self.tree.output_folder(self.dataset_id, self.search_trainer, self.configuration, self.fold, self.plans)


@dataclass
class Measured:
    returncode: int
    wall_s: float
    peak_rss_mb: float
    command: list[str] = field(default_factory=list)
    # the command's CPU time over the whole machine's busy CPU time while it ran: well below 1 means other work
    # shared the CPUs, so its timings are not cost figures (None where /proc/stat is missing)
    cpu_share: float | None = None


def user_settings(environ: dict[str, str]) -> dict[str, str]:
    """The nnunet_autoaug variables set for a run beyond the budget's schedule (e.g. the policy that
    nnUNetTrainerPolicy retrains): the report names them, as they change what a trainer does."""
    return {k: v for k, v in sorted(environ.items()) if k.startswith("nnUNet_autoaug_") and k not in SCHEDULE_VARS}


def run_label(trainer: str, run: int) -> str:
    """How the report names a run: the trainer, with the run number from the second run on."""
    return trainer if run == 1 else f"{trainer}#{run}"


def job_folder(runs: Path, regime: str, trainer: str, run: int) -> Path:
    return runs / regime / (trainer if run == 1 else f"{trainer}__run{run}")


def search_cases(output_folder: Path) -> int:
    """How many of the fold's training cases a run held out to rank its search (0: its weights saw them all), from
    the debug.json nnU-Net writes at the start of training with every trainer attribute as text."""
    debug = output_folder / "debug.json"
    if not debug.exists():
        return 0
    keys = json.loads(debug.read_text()).get("search_keys")
    return len(ast.literal_eval(keys) or ()) if keys else 0


def found_policy(search: Job) -> Path | None:
    """The file that retrains a finished policy search on all training cases, the one its end-of-training log
    recommends (``retrain_file``: ASNG's final theta, MetaAug's learned distribution); None for a trainer without a
    search split."""
    import nnunet_autoaug.trainers as ours

    if not search_cases(search.output_folder) or not (search.output_folder / POLICY_FILE).exists():
        return None
    trainer = getattr(ours, search.trainer, None)
    found = search.output_folder / (trainer.retrain_file() if hasattr(trainer, "retrain_file") else POLICY_FILE)
    return found if found.exists() else None


def retraining(search: Job, policy: Path) -> Job:
    """``nnUNetTrainerPolicy`` on all of the search's training cases with ``policy``, in results of its own (nnU-Net's
    layout holds one nnUNetTrainerPolicy per fold, and every search of the run gets one)."""
    tree = replace(search.tree, results_name=f"{search.tree.results_name}_retrain_{search.trainer}",
                   extra_env={**search.tree.extra_env, POLICY_VAR: str(policy)})
    job = replace(search, tree=tree, trainer=RETRAINER, retrains=search.trainer)
    return replace(job, work=job_folder(search.work.parents[1], search.regime, job.name, search.run))


def run_measured(command: list[str], env: dict[str, str], log: Path) -> Measured:
    """Run a command with its output in ``log``; peak RSS is the largest process among it and its children."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start, busy_before = time.time(), machine_busy_seconds()
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(command)}\n")
        out.flush()
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    busy_after = machine_busy_seconds()
    share = None
    if busy_before is not None and busy_after is not None and busy_after > busy_before:
        share = round((usage.ru_utime + usage.ru_stime) / (busy_after - busy_before), 3)
    return Measured(process.returncode, time.time() - start, usage.ru_maxrss / 1024, command, share)


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes of the machine have spent busy since boot (Linux /proc/stat; idle and iowait
    excluded)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def validation_inputs(job: Job, val_cases: list[str]) -> tuple[Path, Path]:
    """Folders of links to the validation cases' images and labels (stock predict/evaluate take folders)."""
    raw = next(job.tree.raw.glob(f"Dataset{job.dataset_id:03d}_*"))
    ending = json.loads((raw / "dataset.json").read_text())["file_ending"]
    images, labels = job.work.parent / "inputs" / "images", job.work.parent / "inputs" / "labels"
    for folder in (images, labels):
        folder.mkdir(parents=True, exist_ok=True)
    for case in val_cases:
        for image in raw.glob(f"imagesTr/{case}_[0-9][0-9][0-9][0-9]{ending}"):
            link = images / image.name
            if not link.exists():
                link.symlink_to(image)
        link = labels / f"{case}{ending}"
        if not link.exists():
            link.symlink_to(raw / "labelsTr" / f"{case}{ending}")
    return images, labels


def peak_gpu_memory_mib(output_folder: Path | None) -> float | None:
    """What torch allocated at most on the GPU during the training's last call (after a ``--c`` resume: since
    the resume). None on CPU, or for a training from before the trainers recorded it."""
    file = None if output_folder is None else output_folder / PEAK_GPU_MEMORY_FILE
    return json.loads(file.read_text())["peak_allocated_mib"] if file is not None and file.exists() else None


def training_log(output_folder: Path) -> dict | None:
    """nnU-Net's per-epoch log of a finished training (losses, pseudo Dice, epoch timestamps), from its final
    checkpoint."""
    checkpoint = output_folder / "checkpoint_final.pth"
    if not checkpoint.exists():
        return None
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["logging"]


def training_seconds_per_iteration(output_folder: Path, iters: int) -> float | None:
    """Median epoch duration from nnU-Net's own log / iterations (includes the epoch's validation batches)."""
    logging = training_log(output_folder)
    if logging is None:
        return None
    durations = [e - s for s, e in zip(logging["epoch_start_timestamps"], logging["epoch_end_timestamps"])]
    return float(sorted(durations)[len(durations) // 2] / iters) if durations else None


def _train(job: Job, trainer: str, configuration: str, output_folder: Path, env: dict[str, str], log: Path,
           previous: dict | None) -> dict:
    """One nnUNetv2_train call: continues an interrupted training with ``--c``; a finished one keeps the
    measurement of the call that trained it (rerunning it would only time a reload)."""
    if previous and previous.get("returncode") == 0 and (output_folder / "checkpoint_final.pth").exists():
        return previous
    command = [console_script("nnUNetv2_train"), str(job.dataset_id), configuration, str(job.fold), "-tr", trainer,
               "-p", job.plans, "-device", job.device]
    if any((output_folder / f).exists() for f in ("checkpoint_latest.pth", "checkpoint_final.pth")):
        command.append("--c")
    measured = asdict(run_measured(command, env, log))
    if "--c" in command and previous and previous.get("returncode") != 0 and previous.get("wall_s"):
        measured = _both_calls(previous, measured)  # an interrupted training costs what all its calls took
    return measured


def _both_calls(earlier: dict, later: dict) -> dict:
    shares = [(c["cpu_share"], c["wall_s"]) for c in (earlier, later) if c.get("cpu_share") is not None]
    return {**later, "wall_s": earlier["wall_s"] + later["wall_s"], "calls": earlier.get("calls", 1) + 1,
            "peak_rss_mb": max(earlier.get("peak_rss_mb") or 0, later.get("peak_rss_mb") or 0),
            "cpu_share": round(sum(s * w for s, w in shares) / sum(w for _, w in shares), 3) if shares else None}


def _search(job: Job, env: dict[str, str], log: Path, previous: dict, status: dict) -> bool:
    """The search stage of a searched architecture, then its genotype registered as ``job.train_configuration``
    (with the stock-style registration command, so that the log shows exactly what a user would type)."""
    folder = job.search_output_folder
    status["search_output_folder"] = str(folder)
    status["search"] = _train(job, job.search_trainer, job.configuration, folder, env, log, previous.get("search"))
    status["search_sec_per_iter"] = training_seconds_per_iteration(folder, job.budget.iters)
    if status["search"]["returncode"] != 0:
        return False
    status["register"] = asdict(run_measured(
        [console_script("nnUNetv2_autoaug_scnas_register"), "-d", str(job.dataset_id), "-g",
         str(folder / GENOTYPE_FILE), "-c", job.configuration, "-p", job.plans, "--name", job.train_configuration],
        env, log))
    return status["register"]["returncode"] == 0


def run_job(job: Job, val_cases: list[str]) -> dict:
    """(Search and) train or continue, predict the validation cases, evaluate; returns and stores the status."""
    previous: dict = {}
    if job.status_file.exists():
        previous = json.loads(job.status_file.read_text())
        if previous.get("state") == "done":
            return previous
    job.work.mkdir(parents=True, exist_ok=True)
    env = job.tree.env(**job.budget.env())
    log = job.work / "log.txt"
    status: dict = {"trainer": job.trainer, "job": job.name, "label": job.label, "run": job.run,
                    "regime": job.regime, "fold": job.fold, "plans": job.plans,
                    "configuration": job.train_configuration, "budget": asdict(job.budget), "device": job.device,
                    "output_folder": str(job.output_folder),
                    "settings": user_settings(env)}
    steps = ["train", "predict", "evaluate"]
    if job.search_trainer is not None:
        steps[:0] = ["search", "register"]
    if job.search_trainer is None or _search(job, env, log, previous, status):
        status["train"] = _train(job, job.trainer, job.train_configuration, job.output_folder, env, log,
                                 previous.get("train"))
        status["sec_per_iter"] = training_seconds_per_iteration(job.output_folder, job.budget.iters)
        status["peak_gpu_mib"] = max(filter(None, (peak_gpu_memory_mib(job.output_folder),
                                                   peak_gpu_memory_mib(job.search_output_folder))), default=None)
    if status.get("train", {}).get("returncode") == 0:
        images, labels = validation_inputs(job, val_cases)
        predictions = job.work / "predictions"
        predicted = run_measured([console_script("nnUNetv2_predict"), "-i", str(images), "-o", str(predictions),
                                  "-d", str(job.dataset_id), "-c", job.train_configuration, "-tr", job.trainer, "-p",
                                  job.plans, "-f", str(job.fold), "-device", job.device, "-npp", "1", "-nps", "1"],
                                 env, log)
        status["predict"] = asdict(predicted)
        if predicted.returncode == 0:
            folder = job.tree.preprocessed / job.tree.dataset_name(job.dataset_id)
            evaluated = run_measured([console_script("nnUNetv2_evaluate_folder"), str(labels), str(predictions),
                                      "-djfile", str(folder / "dataset.json"), "-pfile",
                                      str(folder / f"{job.plans}.json"), "-o", str(job.work / "summary.json"),
                                      "-np", "1"], env, log)
            status["evaluate"] = asdict(evaluated)
    codes = [status.get(k, {}).get("returncode", 1) for k in steps]
    status["state"] = "done" if not any(codes) else "failed"
    if status["state"] == "failed":
        status["log_tail"] = log.read_text()[-3000:]
    job.status_file.write_text(json.dumps(status, indent=2))
    return status
