"""Pack what the GPU check needs for a machine that has torch and CUDA but cannot reach a package index.

    python scripts/gpu_kit/pack.py --preprocessed $nnUNet_preprocessed/Dataset004_Hippocampus --out .gpukit

Writes two things into --out (the default .gpukit is in .gitignore; carry it to the GPU machine):
- ``site.tar.xz``: nnU-Net v2 and every package it needs that the target lacks (``preinstalled.txt`` lists what the
  target has), at the versions installed here, installed for the target's Python (--python-version, manylinux
  x86_64). xz, because SimpleITK alone is a 53 MB wheel and such machines often take little data per call.
- ``data/``: the dataset's plans and --cases of its preprocessed cases (nnU-Net splits them into 5 folds itself).

Then, on the GPU machine, from the repository root: ``bash scripts/gpu_kit/run.sh .gpukit OUTDIR``.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HERE = Path(__file__).parent
ROOTS = ("nnunetv2",)
# requirements that stay home: imagecodecs (26 MB) only decodes compressed TIFFs, which the check never reads;
# argparse is a Python 2 backport batchgenerators still lists, and on PYTHONPATH it would shadow the standard library's
NOT_NEEDED = frozenset({"imagecodecs", "argparse"})
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")


def preinstalled(path: Path = HERE / "preinstalled.txt") -> set[str]:
    """Canonical names of the packages the target already has (one per line, '#' starts a comment)."""
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return {canonicalize_name(line) for line in lines if line}


def missing_distributions(roots: tuple[str, ...], present: set[str], python_version: str,
                          skip: frozenset[str] = NOT_NEEDED) -> dict[str, str]:
    """{name: version installed here} of the roots and everything they require (for the target's Python on Linux)
    that ``present`` lacks, following requirements through the packages installed here."""
    env = {**default_environment(), "python_version": python_version, "python_full_version": f"{python_version}.0",
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "extra": ""}
    missing: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in missing or name in present or name in skip:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{name} is required but not installed here: install nnunet-autoaug here first "
                             f"(pip install -e .), then pack") from None
        missing[name] = dist.version
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(env):
                todo.append(requirement.name)
    return missing


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], check=True)


def target_flags(python_version: str) -> list[str]:
    flags = ["--only-binary=:all:", "--implementation", "cp", "--python-version", python_version]
    for platform in PLATFORMS:
        flags += ["--platform", platform]
    return flags


def fetch_wheels(dists: dict[str, str], wheelhouse: Path, python_version: str) -> None:
    """A wheel for the target of each; packages published only as source (acvl_utils) are built here, which only
    works for pure-Python ones, and pip says so if not."""
    for name, version in sorted(dists.items()):
        try:
            pip("download", "-q", "--no-deps", *target_flags(python_version), "-d", str(wheelhouse),
                f"{name}=={version}")
        except subprocess.CalledProcessError:
            print(f"no wheel of {name}=={version} for the target (pip's error above): building one here", flush=True)
            pip("wheel", "-q", "--no-deps", "-w", str(wheelhouse), f"{name}=={version}")


def pack_site(wheelhouse: Path, archive: Path, python_version: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        pip("install", "-q", "--no-deps", "--no-compile", "--target", str(site), *target_flags(python_version),
            *map(str, sorted(wheelhouse.glob("*.whl"))))
        subprocess.run(["tar", "-cJf", str(archive), "-C", tmp, "site"], check=True,
                       env={"XZ_OPT": "-6 -T0", "PATH": "/usr/bin:/bin"})


def copy_cases(dataset: Path, target: Path, configuration: str, cases: int) -> list[str]:
    """The dataset's JSON files and the first ``cases`` preprocessed cases (data and ground truth), no split file:
    nnU-Net writes its own 5 folds over what is there."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    data = dataset / f"nnUNetPlans_{configuration}"
    if not data.is_dir():
        raise SystemExit(f"{data} does not exist: plan and preprocess {configuration} for {dataset.name} first")
    names = sorted(infer_dataset_class(str(data)).get_identifiers(str(data)))[:cases]  # sorted, as nnU-Net does
    if len(names) < 10:
        raise SystemExit(f"{data} has {len(names)} cases; the check needs at least 10 (5 folds of 2 or more)")
    out = target / dataset.name
    shutil.rmtree(out, ignore_errors=True)
    (out / data.name).mkdir(parents=True)
    (out / "gt_segmentations").mkdir()
    for file in dataset.glob("*.json"):
        if file.name != "splits_final.json":
            shutil.copy2(file, out / file.name)
    for name in names:
        for file in data.glob(f"{name}.*"):
            shutil.copy2(file, out / data.name / file.name)
        for file in data.glob(f"{name}_seg.*"):
            shutil.copy2(file, out / data.name / file.name)
        for file in (dataset / "gt_segmentations").glob(f"{name}.*"):
            shutil.copy2(file, out / "gt_segmentations" / file.name)
    return names


def size_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2 ** 20


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preprocessed", type=Path, required=True,
                        help="a preprocessed dataset folder, e.g. $nnUNet_preprocessed/Dataset004_Hippocampus")
    parser.add_argument("--out", type=Path, default=Path(".gpukit"))
    parser.add_argument("--cases", type=int, default=20, help="preprocessed cases to take along")
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--python-version", default="3.12", help="the target's Python, major.minor")
    parser.add_argument("--data-only", action="store_true", help="keep OUT/site.tar.xz, refresh only the data")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    if not args.data_only:
        dists = missing_distributions(ROOTS, preinstalled(), args.python_version)
        print("packing for the target:", ", ".join(f"{n}=={v}" for n, v in sorted(dists.items())), flush=True)
        with tempfile.TemporaryDirectory() as wheelhouse:
            fetch_wheels(dists, Path(wheelhouse), args.python_version)
            pack_site(Path(wheelhouse), args.out / "site.tar.xz", args.python_version)
    names = copy_cases(args.preprocessed, args.out / "data", args.configuration, args.cases)
    print(f"{len(names)} cases of {args.preprocessed.name}; {args.out}: {size_mib(args.out):.1f} MiB")


if __name__ == "__main__":
    main()
