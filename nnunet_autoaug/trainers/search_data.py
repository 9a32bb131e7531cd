"""The held-out search split as data: a mixin (before the nnU-Net trainer in the bases) for every trainer that
learns something (a policy, architecture weights) on part of the fold's training cases.

It removes ``search_fraction`` of the fold's training cases from nnU-Net's training set (nnunet_autoaug/search_split.py
picks them) and serves them, un-augmented, as ``self.dataloader_search``.
"""
from __future__ import annotations

from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

from nnunet_autoaug.search_split import split_search_cases


class SearchSplitData:
    search_fraction: float = 0.2  # subclasses set it in __init__ (0 disables the split)
    search_split_use = "the search split"  # what the held-out cases are for, in the training log

    def get_tr_and_val_datasets(self) -> tuple:
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        if self.search_fraction <= 0:
            return dataset_tr, dataset_val
        train_keys, self.search_keys = split_search_cases(dataset_tr.identifiers, self.search_fraction)
        self.print_to_log_file(f"nnunet_autoaug: {len(self.search_keys)} of the fold's training cases held out for "
                               f"{self.search_split_use}: {self.search_keys}")
        return self._dataset(train_keys), dataset_val

    def get_dataloaders(self) -> tuple:
        loaders = super().get_dataloaders()
        if self.search_keys:
            self.dataloader_search = self._search_dataloader()
        return loaders

    def on_train_end(self) -> None:
        super().on_train_end()
        if isinstance(self.dataloader_search, NonDetMultiThreadedAugmenter):
            self.dataloader_search._finish()

    def _dataset(self, keys: list[str]):  # noqa: ANN202 - nnU-Net's dataset classes share no public base
        return self.dataset_class(self.preprocessed_dataset_folder, keys,
                                  folder_with_segs_from_previous_stage=self.folder_with_segs_from_previous_stage)

    def _search_dataloader(self):  # noqa: ANN202
        """Un-augmented batches of the search split at the final patch size (nnU-Net's validation transforms)."""
        lm = self.label_manager
        transforms = self.get_validation_transforms(
            self._get_deep_supervision_scales(), is_cascaded=self.is_cascaded, foreground_labels=lm.foreground_labels,
            regions=lm.foreground_regions if lm.has_regions else None, ignore_label=lm.ignore_label)
        ps = self.configuration_manager.patch_size
        loader = nnUNetDataLoader(self._dataset(self.search_keys), self.batch_size, ps, ps, lm,
                                  oversample_foreground_percent=self.oversample_foreground_percent,
                                  sampling_probabilities=None, pad_sides=None, transforms=transforms,
                                  probabilistic_oversampling=self.probabilistic_oversampling)
        n = get_allowed_n_proc_DA()
        if n == 0:
            return SingleThreadedAugmenter(loader, None)
        return NonDetMultiThreadedAugmenter(loader, None, num_processes=max(1, n // 2), num_cached=max(3, n // 4),
                                            seeds=None, pin_memory=self.device.type == "cuda", wait_time=0.002)
