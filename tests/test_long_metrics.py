"""tIoU, ActivityNet-style mAP and NMS / soft-NMS on hand-made cases worked out in the comments."""

import math

import numpy as np
import pytest

from mtv.errors import DataError, ResultsError
from mtv.eval.localization_metrics import (
    average_precision,
    interpolated_average_precision,
    mean_average_precision,
    pairwise_temporal_iou,
    postprocess,
    temporal_iou,
)


def test_temporal_iou_by_hand():
    # [0, 10] vs [5, 15]: overlap 5, union 10 + 10 - 5 = 15 -> 1/3; touching [10, 20] -> 0;
    # [2, 4] inside -> 2 / 10.
    np.testing.assert_allclose(temporal_iou((0, 10), [(5, 15), (10, 20), (2, 4)]), [1 / 3, 0.0, 0.2])
    assert pairwise_temporal_iou([(0, 1), (0, 2)], [(0, 2)]).shape == (2, 1)
    with pytest.raises(DataError, match=r"segments b\[0\] has start 3.0 >= end 3.0"):
        temporal_iou((0, 1), [(3, 3)])


def test_interpolated_ap_by_hand():
    # Ranked TP, FP, TP over 2 ground truths: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    # Envelope from the right: 1, 2/3, 2/3. Recall steps: 0 -> 1/2 at precision 1, 1/2 -> 1 at 2/3.
    # AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
    assert interpolated_average_precision([1, 0.5, 2 / 3], [0.5, 0.5, 1.0]) == pytest.approx(5 / 6)
    # Ranked FP, TP, TP: precision 0, 1/2, 2/3 at recall 0, 1/2, 1. The envelope lifts the precision at recall
    # 1/2 to 2/3 (reached later): AP = 1/2 * 2/3 + 1/2 * 2/3 = 2/3 (raw precision would give 7/12).
    assert interpolated_average_precision([0, 0.5, 2 / 3], [0, 0.5, 1.0]) == pytest.approx(2 / 3)


def test_ap_matches_by_score_and_each_ground_truth_once():
    truth = {"v1": [(0, 10), (20, 30)]}
    detections = [
        ("v1", 21, 30, 0.7),   # third by score: tIoU 0.9 with [20, 30] -> TP
        ("v1", 0, 10, 0.9),    # first: exact -> TP
        ("v1", 40, 50, 0.8),   # second: overlaps nothing -> FP
        ("v1", 0, 10, 0.6),    # fourth: [0, 10] is already taken -> FP (each ground truth once)
        ("v2", 0, 10, 0.95),   # a video with no ground truth -> FP, ranked first
    ]
    # Ranked: FP, TP, FP, TP, FP -> precision 0, 1/2, 1/3, 1/2, 2/5 at recall 0, 1/2, 1/2, 1, 1.
    # Envelope: 1/2, 1/2, 1/2, 1/2, 2/5 -> AP = 1/2 * 1/2 + 1/2 * 1/2 = 1/2 at every threshold (tIoUs 1, 0.9).
    np.testing.assert_allclose(average_precision(truth, detections, (0.3, 0.5, 0.7)), [0.5, 0.5, 0.5])


def test_map_depends_on_the_threshold_and_averages_over_ground_truth_classes():
    truth = {"v": [(0, 10, "run"), (20, 30, "jump")], "w": [(0, 4, "run")]}
    detections = {
        # run: [0, 6] vs [0, 10] has tIoU 0.6: TP at 0.3 and 0.5, FP at 0.7; [0, 4] in w exact -> TP.
        #   ranked (0.9 exact w, 0.8 v): at 0.3/0.5 both TP -> AP 1; at 0.7 TP, FP -> P 1 at R 1/2 -> AP 1/2.
        "v": [(0, 6, "run", 0.8)],
        "w": [(0, 4, "run", 0.9), (0, 4, "swim", 0.99)],  # swim has no ground truth: counted nowhere
    }
    # jump has ground truth and no detection -> AP 0. mAP@0.3 = mAP@0.5 = (1 + 0) / 2, mAP@0.7 = (1/2 + 0) / 2.
    result = mean_average_precision(truth, detections)
    assert result["mAP@0.3"] == pytest.approx(0.5) and result["mAP@0.5"] == pytest.approx(0.5)
    assert result["mAP@0.7"] == pytest.approx(0.25)
    assert result["mAP"] == pytest.approx((0.5 + 0.5 + 0.25) / 3)
    assert result["per_class"] == {"jump": [0.0, 0.0, 0.0], "run": [1.0, 1.0, 0.5]}


def test_a_detection_takes_the_best_overlapping_free_ground_truth():
    # Ground truth [0, 10] and [8, 20]. Detection A [9, 20] (0.9) overlaps [8, 20] best (11/12) and takes it;
    # B [7, 19] (0.8) overlaps [8, 20] with 11/13 and [0, 10] with 3/19: [8, 20] is taken, [0, 10] is under
    # 0.3 -> FP. Ranked TP, FP -> precision 1, 1/2 at recall 1/2, 1/2 -> AP 1/2.
    truth = {"v": [(0, 10), (8, 20)]}
    assert average_precision(truth, [("v", 9, 20, 0.9), ("v", 7, 19, 0.8)], (0.3,))[0] == pytest.approx(0.5)


def test_bad_records_are_named():
    with pytest.raises(DataError, match=r"ground_truth\['v'\]\[0\] has start 5 and end 5"):
        mean_average_precision({"v": [(5, 5, "a")]}, {})
    with pytest.raises(ResultsError, match=r"detections\['v'\]\[0\] must be \(start, end, label, score\)"):
        mean_average_precision({"v": [(0, 5, "a")]}, {"v": [(0, 5, "a")]})


def test_nms_soft_nms_threshold_and_top_k():
    segments = [(0, 10), (1, 10), (20, 30), (0, 10)]
    scores = [0.9, 0.8, 0.7, 0.95]
    labels = [0, 0, 0, 1]
    # NMS, class 0: keep [0, 10] (0.9); [1, 10] has tIoU 9/10 >= 0.5 -> dropped; [20, 30] kept. Class 1 alone.
    segs, kept, labs = postprocess(segments, scores, labels, method="nms", iou_threshold=0.5)
    np.testing.assert_allclose(kept, [0.95, 0.9, 0.7])
    np.testing.assert_array_equal(labs, [1, 0, 0])
    np.testing.assert_allclose(segs, [(0, 10), (0, 10), (20, 30)])
    # Gaussian soft-NMS (sigma 0.5): [1, 10] decays to 0.8 exp(-0.81 / 0.5) = 0.15833; [20, 30] has tIoU 0 with
    # both kept ones and keeps 0.7.
    segs, kept, labs = postprocess(segments, scores, labels, method="soft_nms", sigma=0.5)
    np.testing.assert_allclose(kept, [0.95, 0.9, 0.7, 0.8 * math.exp(-0.81 / 0.5)])
    # A score threshold of 0.2 now drops the decayed one; top_k=2 keeps the best two over all classes.
    _, kept, _ = postprocess(segments, scores, labels, method="soft_nms", score_threshold=0.2)
    np.testing.assert_allclose(kept, [0.95, 0.9, 0.7])
    _, kept, labs = postprocess(segments, scores, labels, method="none", top_k=2)
    np.testing.assert_allclose(kept, [0.95, 0.9])
    with pytest.raises(DataError, match="method must be one of"):
        postprocess(segments, scores, labels, method="wbf")
