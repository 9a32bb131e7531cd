"""Guard against nnU-Net versions whose hooks we do not support."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

SUPPORTED = ((2, 8), (2, 9))  # [min, max)


def _parse(v: str) -> tuple[int, ...]:
    parts = []
    for token in v.split(".")[:3]:
        digits = "".join(ch for ch in token if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def check_nnunet_version(installed: str | None = None) -> str:
    """Return the installed nnunetv2 version, or raise ImportError saying what to install."""
    if installed is None:
        try:
            installed = version("nnunetv2")
        except PackageNotFoundError:
            raise ImportError("nnunet_autoaug needs nnunetv2, which is not installed: pip install "
                              "'nnunetv2>=2.8,<2.9'") from None
    lo, hi = SUPPORTED
    if not (lo <= _parse(installed)[:2] < hi):
        raise ImportError(f"nnunet_autoaug supports nnunetv2 >= {lo[0]}.{lo[1]} and < {hi[0]}.{hi[1]}, but "
                          f"nnunetv2 {installed} is installed. nnunetv2 < 2.8 cannot load external trainers "
                          f"(no nnUNet_extTrainer). Fix: pip install 'nnunetv2>=2.8,<2.9'")
    return installed
