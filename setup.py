"""Build glue that pyproject.toml cannot express: the start-up hook that registers our trainers with nnU-Net.

``nnunet_autoaug.pth`` goes to the root of site-packages (regular and editable installs); Python runs its import line
at start-up, which appends our trainer folder to ``nnUNet_extTrainer``. The source folder ``trainers/`` (re-exports
only) is shipped inside the wheel as ``nnunet_autoaug/ext_trainers``.
"""
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH_NAME = "nnunet_autoaug.pth"
PTH_LINE = "import nnunet_autoaug._startup; nnunet_autoaug._startup.main()\n"


class BuildPyWithHook(build_py):
    def run(self) -> None:
        super().run()
        Path(self.build_lib, PTH_NAME).write_text(PTH_LINE)

    def get_outputs(self, include_bytecode: bool = True) -> list:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib, PTH_NAME))]


class EditableWheelWithHook(editable_wheel):
    # editable wheels only carry setuptools' own path hook; add ours next to it
    def _create_wheel_file(self, bdist_wheel):  # noqa: ANN001 - setuptools internal signature
        original = self._select_strategy

        def strategy_with_hook(*args, **kwargs):  # noqa: ANN002, ANN003
            inner = original(*args, **kwargs)

            class WithHook:
                def __call__(self, wheel, files, mapping):  # noqa: ANN001
                    inner(wheel, files, mapping)
                    wheel.writestr(PTH_NAME, PTH_LINE.encode())

                def __enter__(self):
                    inner.__enter__()
                    return self

                def __exit__(self, *exc):  # noqa: ANN002
                    return inner.__exit__(*exc)

            return WithHook()

        self._select_strategy = strategy_with_hook
        return super()._create_wheel_file(bdist_wheel)


setup(
    packages=[*find_packages(include=["nnunet_autoaug", "nnunet_autoaug.*"]), "nnunet_autoaug.ext_trainers"],
    package_dir={"nnunet_autoaug.ext_trainers": "trainers"},
    cmdclass={"build_py": BuildPyWithHook, "editable_wheel": EditableWheelWithHook},
)
