"""NDPluginProcess's steps (Proc1:) on plain arrays, and the node's reference frames."""

from __future__ import annotations

import numpy as np
import pytest

from pimega.core.errors import ConfigError
from pimega.pipeline.correct import (
    ProcessSteps,
    RecursiveFilter,
    apply_process,
    filter_coefficients,
)
from pimega.runtime.process import References


def run(image, steps: ProcessSteps, dtype=np.float32, recursive: RecursiveFilter | None = None):
    out = np.empty(np.shape(image), dtype)
    apply_process(np.asarray(image), steps, out, recursive or RecursiveFilter())
    return out


def test_steps_run_in_adcores_order_background_flat_offset_scale_then_clips():
    image = np.array([[10, 20], [30, 40]], np.uint16)
    background = np.array([[2, 4], [6, 8]], np.float64)
    flat = np.array([[2, 0], [4, 8]], np.float64)  # 0: that pixel is not flat-fielded
    steps = ProcessSteps(background=background, flat=flat, scale_flat=2.0,
                         offset_scale=(1.0, 10.0), high_clip=(150.0, 150.0),
                         low_clip=(50.0, 0.0))
    # (10-2)*2/2=8 → 90 ; (20-4)=16 → 170 → 150 ; (30-6)*2/4=12 → 130 ; (40-8)*2/8=8 → 90
    np.testing.assert_array_equal(run(image, steps), [[90, 150], [130, 90]])


def test_automatic_output_keeps_the_input_type_and_integers_are_clipped_to_it():
    steps = ProcessSteps(offset_scale=(-5.0, 1.0))
    assert steps.output_dtype(np.dtype(np.uint16)) == np.uint16
    np.testing.assert_array_equal(run(np.array([3, 9], np.uint16), steps, np.uint16), [0, 4])
    assert ProcessSteps(output=np.dtype("float32")).output_dtype(np.dtype("u2")) == np.float32


def test_recursive_average_filter_converges_to_the_mean_of_num_filter_frames():
    steps = ProcessSteps(filter=filter_coefficients("RecursiveAve", 4), num_filter=4)
    recursive = RecursiveFilter()
    outputs = [run(np.array([value], np.float64), steps, np.float64, recursive)[0]
               for value in (4.0, 8.0, 12.0, 16.0)]
    assert outputs[0] == 4.0  # the first frame after a reset is the frame
    assert outputs[-1] == pytest.approx(np.mean([4.0, 8.0, 12.0, 16.0]))
    assert recursive.num_filtered == 4
    recursive.reset()
    assert run(np.array([2.0]), steps, np.float64, recursive)[0] == 2.0


def test_sum_filter_adds_frames_and_unknown_types_are_refused():
    steps = ProcessSteps(filter=filter_coefficients("Sum", 3), num_filter=3)
    recursive = RecursiveFilter()
    sums = [run(np.array([1.0]), steps, np.float64, recursive)[0] for _ in range(3)]
    assert sums == [1.0, 2.0, 3.0]
    with pytest.raises(ConfigError, match="filter type"):
        filter_coefficients("Median", 3)


def test_bad_pixels_are_zero_and_the_record_names_each_step():
    mask = np.array([True, False])
    steps = ProcessSteps(background=np.zeros(2), bad_pixel_mask=mask)
    np.testing.assert_array_equal(run(np.array([5, 6], np.uint16), steps), [0, 6])
    record = steps.record()
    assert record["background_applied"] and record["pixel_mask_applied"]
    assert not record["flatfield_applied"]
    np.testing.assert_array_equal(record["pixel_mask"], [1, 0])


def test_a_reference_is_the_next_raw_frame_after_the_request():
    references = References()
    references.offer(np.ones(2))
    assert references.saved() == {}
    references.request("background")
    references.offer(np.array([3, 4], np.uint16))
    references.offer(np.array([9, 9], np.uint16))  # not asked for: ignored
    np.testing.assert_array_equal(references.saved()["background"], [3, 4])
    with pytest.raises(ValueError, match="reference"):
        references.request("dark")
