"""The atlas baseline: mean training label maps placed by the body's centre of mass."""
import numpy as np
import SimpleITK as sitk

from UniversalSeg.training.atlas_baseline import Atlas, body_centre


def _case(shift_mm, radius_mm=30.0, spacing=2.0, size=80, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)):
    """A CT: a body (soft tissue) with an organ sphere in it, the whole thing shifted."""
    idx = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"), -1) * spacing - spacing * (size - 1) / 2
    lps = idx @ np.array(direction, float).reshape(3, 3).T - np.asarray(shift_mm)
    body = (lps / np.array((60.0, 45.0, 70.0)) ** 1) ** 2
    inside = body.sum(-1) <= 1
    organ = ((lps - (20.0, 0.0, 10.0)) ** 2).sum(-1) <= radius_mm ** 2
    image = np.where(inside, 40.0, -1000.0).astype(np.float32)

    def img(a, dtype):
        im = sitk.GetImageFromArray(np.ascontiguousarray(a.transpose(2, 1, 0)).astype(dtype))
        im.SetSpacing((spacing,) * 3)
        im.SetDirection(direction)
        im.SetOrigin(tuple(-np.array(direction, float).reshape(3, 3) @ np.full(3, spacing * (size - 1) / 2)))
        return im
    return img(image, np.float32), img(organ & inside, np.uint8)


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_body_centre_follows_the_body():
    image, _ = _case((10.0, -6.0, 4.0))
    assert np.allclose(body_centre(image, "CT"), (10.0, -6.0, 4.0), atol=1.0)


def test_atlas_recovers_a_shifted_organ_and_ignores_intensities():
    atlas = Atlas()
    for shift in ((0, 0, 0), (12, -8, 6), (-10, 4, -12)):
        image, mask = _case(shift)
        atlas.add(image, "CT", {"organ": mask})
    # a new case elsewhere, on a flipped grid: the shift is all the atlas needs
    image, mask = _case((-20, 14, 8), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    got = atlas.segment(image, "CT", ["organ", "unknown"])
    assert set(got) == {"organ"}  # a task the atlas never saw is not made up
    assert _dice(got["organ"], sitk.GetArrayViewFromImage(mask) > 0) > 0.95
    # no image is looked at beyond the body: the same atlas answer for a brighter organ
    bright = sitk.GetArrayFromImage(image)
    bright[sitk.GetArrayViewFromImage(mask) > 0] = 300
    other = sitk.GetImageFromArray(bright)
    other.CopyInformation(image)
    assert _dice(atlas.segment(other, "CT", ["organ"])["organ"], got["organ"]) > 0.97


def test_atlas_threshold_is_the_majority_of_training_masks():
    atlas = Atlas()
    sizes = (20.0, 25.0, 30.0)
    for r in sizes:
        image, mask = _case((0, 0, 0), radius_mm=r)
        atlas.add(image, "CT", {"organ": mask})
    image, _ = _case((0, 0, 0))
    got = atlas.segment(image, "CT", ["organ"])["organ"]
    _, middle = _case((0, 0, 0), radius_mm=25.0)  # 2 of 3 masks hold the middle sphere
    assert _dice(got, sitk.GetArrayViewFromImage(middle) > 0) > 0.93
