"""Run at interpreter start-up by ``nnunet_autoaug.pth`` (installed into site-packages next to the package).

It only appends our trainer folder to ``nnUNet_extTrainer``; it must be cheap and must never break Python start-up,
so any failure is swallowed (``nnUNetv2_autoaug_check`` reports it instead).
"""


def main() -> None:
    try:
        from nnunet_autoaug.discovery import register

        register()
    except Exception:  # noqa: BLE001 - a broken install must not stop every Python process from starting
        pass
