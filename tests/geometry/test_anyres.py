"""AnyRes geometry on edge cases: extreme aspect ratios, images smaller than a crop, exact multiples."""

import pytest

from vlmhub.geometry.anyres import anyres_num_tokens, fit_within, grid_shape, select_best_resolution, unpadded_shape

PINPOINTS_336 = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]  # LLaVA-1.6, (h, w)
TINY = [[56, 112], [112, 56], [112, 112], [168, 56], [56, 168]]


@pytest.mark.parametrize(
    "size, best",
    [
        ((90, 150), (112, 112)),  # the llava-1.6 fixture's images, (h, w)
        ((120, 50), (168, 56)),
        ((56, 112), (56, 112)),  # exact pinpoint
        ((1, 1000), (56, 112)),  # extreme: a 1-px-high image keeps no whole row anywhere; least waste wins
        ((1000, 1), (56, 112)),
        ((10, 10), (56, 112)),  # smaller than one crop: every canvas keeps all pixels, least waste wins (first)
    ],
)
def test_select_best_resolution(size, best):
    assert select_best_resolution(size, TINY) == best


def test_grid_and_fit():
    assert grid_shape((90, 150), TINY, 56) == (2, 2)
    assert grid_shape((120, 50), TINY, 56) == (3, 1)
    assert grid_shape((336, 336), PINPOINTS_336, 336) == (1, 2)  # ties go to the first, as in both originals
    assert fit_within((90, 150), (112, 112)) == (68, 112)  # ceil(90 * 112/150) = 68
    assert fit_within((120, 50), (168, 56)) == (135, 56)  # ceil(120 * 56/50 = 134.4)
    assert fit_within((112, 112), (112, 112)) == (112, 112)


def test_unpadding_keeps_an_odd_extra_row():
    # the fixture's 50x120 image on a 12x4 feature map: new_h = int(120 * 4/50) = 9, pad = (12 - 9)//2 = 1,
    # rows 1..11 are kept: 10 rows, one more than the image's 9
    assert unpadded_shape((120, 50), (12, 4)) == (1, 11, 0, 4)
    assert unpadded_shape((90, 150), (8, 8)) == (2, 6, 0, 8)  # new_h = int(90 * 8/150) = 4, pad 2
    assert unpadded_shape((50, 50), (8, 8)) == (0, 8, 0, 8)  # exact fit: nothing removed


def test_unpadding_rounds_float_noise_like_transformers():
    # 55 * (72/66) = 59.99999999999999 in floating point: the original truncates to 59, transformers rounds to 60
    assert int(55 * (72 / 66)) == 59
    top, bottom, left, right = unpadded_shape((55, 66), (72, 72))
    assert bottom - top == 72 - 2 * ((72 - 60) // 2)


def test_unpadding_matches_transformers():
    import torch
    from transformers.models.llava_next.modeling_llava_next import unpad_image

    for size in [(120, 50), (90, 150), (55, 66), (1, 1000), (1000, 1), (37, 41)]:
        for feature in [(12, 4), (8, 8), (72, 72), (24, 48)]:
            top, bottom, left, right = unpadded_shape(size, feature)
            assert unpad_image(torch.zeros(1, *feature), size).shape[1:] == (bottom - top, right - left)


@pytest.mark.parametrize("merge, expected", [("spatial_unpad", [52, 66]), ("spatial", [80, 64]), ("flat", [80, 64])])
def test_token_counts_match_the_fixture_variants(merge, expected):
    assert [anyres_num_tokens(s, TINY, 56, 4, merge) for s in [(90, 150), (120, 50)]] == expected


def test_token_counts_on_real_sizes():
    # LLaVA-1.6 at 336 px, 24x24 features per crop: a 672x672 image fills a 2x2 grid with no padding
    assert anyres_num_tokens((672, 672), PINPOINTS_336, 336, 24) == 576 + 48 * 49
