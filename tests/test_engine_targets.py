"""Batched training targets must equal nnU-Net's per-sample batchgeneratorsv2 transforms exactly."""
import pytest
import torch
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTransform
from batchgeneratorsv2.transforms.utils.seg_to_regions import ConvertSegmentationToRegionsTransform

from nnunet_autoaug.augment.targets import deep_supervision_targets, remove_padding_label, segmentation_to_regions

SPATIAL = [(21, 30, 17), (37, 26)]


def label_maps(shape, dtype, n: int = 3) -> torch.Tensor:
    return torch.randint(-1, 6, (n, 1, *shape), generator=torch.Generator().manual_seed(len(shape))).to(dtype)


def ds_scales(ndim: int) -> list:
    # nnU-Net style: full resolution first, anisotropic pooling, plus a bare float as bgv2 also accepts
    full = [1.0] * ndim
    return [full, [1.0] + [0.5] * (ndim - 1), [0.5] * ndim, [0.25] * (ndim - 1) + [0.125], 0.3]


@pytest.mark.parametrize("shape", SPATIAL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.int16, torch.uint8])
def test_deep_supervision_targets_match_bgv2(shape, dtype):
    seg = label_maps(shape, dtype).clamp(min=0) if dtype == torch.uint8 else label_maps(shape, dtype)
    scales = ds_scales(len(shape))
    ours = deep_supervision_targets(seg, scales)
    assert ours[0] is seg  # full resolution is passed through, as bgv2 does
    transform = DownsampleSegForDSTransform(scales)
    for i in range(seg.shape[0]):
        reference = transform(segmentation=seg[i].clone())["segmentation"]
        assert len(reference) == len(ours)
        for mine, ref in zip(ours, reference):
            assert mine.dtype == ref.dtype and torch.equal(mine[i], ref)


@pytest.mark.parametrize("shape", SPATIAL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.int16])
def test_regions_match_bgv2(shape, dtype):
    seg = label_maps(shape, dtype)
    regions = [(1, 2, 3), (2, 3), 3, [5], (4, 5, 1)]
    ours = segmentation_to_regions(seg, regions)
    assert ours.shape == (seg.shape[0], len(regions), *shape) and ours.dtype == torch.bool
    transform = ConvertSegmentationToRegionsTransform(regions)
    for i in range(seg.shape[0]):
        assert torch.equal(ours[i], transform(segmentation=seg[i].clone())["segmentation"])
    assert ours[:, 1].any() and not ours[:, 1].all()


def test_remove_padding_label_matches_bgv2():
    seg = label_maps(SPATIAL[0], torch.float32)
    assert (seg == -1).any()
    ours = remove_padding_label(seg)
    reference = RemoveLabelTransform(-1, 0)(segmentation=seg[0].clone())["segmentation"]
    assert torch.equal(ours[0], reference)
    assert (seg == -1).any()  # the input is left alone
    assert set(ours.unique().tolist()) == set(range(6))
