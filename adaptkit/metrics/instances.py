"""Instance-segmentation metrics: COCO-style mask AP."""

from __future__ import annotations

import contextlib
import io
import itertools
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor
from torchmetrics.utilities import dim_zero_cat

from adaptkit.metrics.base import _field, _is_array, _PerImage


def _instance_masks(record: Any) -> Tensor:
    """bool (N, H, W) masks of an instance record, a bool (N, H, W) array or an integer (H, W) label map
    (0 = background, one instance per other id: the form instance targets are stored in)."""
    masks = torch.as_tensor(record if _is_array(record) else _field(record, "masks"))
    if masks.ndim == 2:
        ids = masks.unique()
        return masks[None] == ids[ids != 0][:, None, None]
    return masks.bool()


def _rle_counts(masks: Tensor) -> list[bytes]:
    """COCO RLE strings of (N, H, W) masks: compact per-image records to keep until compute."""
    from pycocotools import mask as mask_utils

    if masks.shape[0] == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.cpu().numpy().transpose(1, 2, 0).astype(np.uint8)))
    return [rle["counts"] for rle in rles]


class MaskAP(_PerImage):
    """COCO mask AP (mean over IoU 0.50:0.95), or AP at one IoU threshold (0.5 or 0.75).

    Scored by pycocotools' ``COCOeval(iouType="segm")`` -- the reference implementation that
    torchmetrics' ``MeanAveragePrecision(iou_type="segm")`` also delegates to.  We do not subclass
    the latter because it imports torchvision even for masks, and no torchvision build matching a
    CPU-only torch is available to us.  Masks are kept as RLE bytes in flat ``cat`` states (plus
    per-image counts to cut them apart again), so DDP sync and ``merge_state`` are ordinary
    concatenations.  Without any target instance the result is -1 (COCO's convention); with targets
    but no prediction it is 0.  At most 100 detections per image count (COCO's maxDets).
    """

    higher_is_better: ClassVar[bool] = True
    _STATS_INDEX: ClassVar[dict[float | None, int]] = {None: 0, 0.5: 1, 0.75: 2}
    _STATES = (
        "image_size",
        "det_count",
        "det_score",
        "det_label",
        "det_rle_len",
        "det_rle",
        "gt_count",
        "gt_label",
        "gt_rle_len",
        "gt_rle",
    )

    def __init__(self, iou_threshold: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if iou_threshold not in self._STATS_INDEX:
            raise ValueError(f"iou_threshold must be one of {list(self._STATS_INDEX)}, got {iou_threshold}")
        self.iou_threshold = iou_threshold
        for name in self._STATES:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def _update_image(self, pred: Any, target: Any) -> None:
        pred_masks = _instance_masks(pred)
        gt_masks = _instance_masks(target)
        if pred_masks.shape[1:] != gt_masks.shape[1:]:
            raise ValueError(f"mask sizes differ: {tuple(pred_masks.shape)} vs {tuple(gt_masks.shape)}")
        records = {
            "image_size": torch.tensor([list(gt_masks.shape[1:])]),
            "det_score": torch.as_tensor(_field(pred, "scores"), dtype=torch.float64).reshape(-1),
            "det_label": self._labels(pred, len(pred_masks)),
            "gt_label": self._labels(None if _is_array(target) else target, len(gt_masks)),
        }
        for prefix, masks in (("det", pred_masks), ("gt", gt_masks)):
            counts = _rle_counts(masks)
            records[f"{prefix}_count"] = torch.tensor([len(counts)])
            records[f"{prefix}_rle_len"] = torch.tensor([len(c) for c in counts], dtype=torch.long)
            records[f"{prefix}_rle"] = torch.from_numpy(np.frombuffer(b"".join(counts), dtype=np.uint8).copy())
        for name, value in records.items():
            getattr(self, name).append(value.to(self.device))

    @staticmethod
    def _labels(record: Any, n: int) -> Tensor:
        """Class ids of a record's instances; all 0 when it has none (decoded instances carry no class)."""
        labels = None if record is None else _field(record, "labels")
        return torch.zeros(n, dtype=torch.long) if labels is None else torch.as_tensor(labels).long().reshape(-1)

    def _state_list(self, name: str) -> list[Any]:
        return dim_zero_cat(getattr(self, name)).cpu().tolist()

    def _annotations(self, prefix: str, sizes: list[list[int]]) -> list[dict[str, Any]]:
        """COCO annotations of the "det" or "gt" instances, cut back out of the flat states."""
        offsets = [0, *itertools.accumulate(int(n) for n in self._state_list(f"{prefix}_rle_len"))]
        data = dim_zero_cat(getattr(self, f"{prefix}_rle")).to(torch.uint8).cpu().numpy().tobytes()
        image_ids = [i for i, n in enumerate(self._state_list(f"{prefix}_count")) for _ in range(int(n))]
        labels = self._state_list(f"{prefix}_label")
        return [
            {"image_id": i, "category_id": int(label), "segmentation": {"size": sizes[i], "counts": data[a:b]}}
            for i, label, a, b in zip(image_ids, labels, offsets[:-1], offsets[1:], strict=True)
        ]

    def compute(self) -> Tensor:
        from pycocotools import mask as mask_utils
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        if len(self.image_size) == 0:
            return torch.tensor(-1.0)
        sizes = dim_zero_cat(self.image_size).long().reshape(-1, 2).tolist()
        gts = self._annotations("gt", sizes)
        dets = self._annotations("det", sizes)
        if not gts:
            return torch.tensor(-1.0)
        if not dets:
            return torch.tensor(0.0)
        for k, gt in enumerate(gts):
            gt.update(id=k + 1, iscrowd=0, area=float(mask_utils.area(gt["segmentation"])))
        for det, score in zip(dets, self._state_list("det_score"), strict=True):
            det["score"] = float(score)
        categories = [{"id": c} for c in sorted({a["category_id"] for a in gts + dets})]
        images = [{"id": i, "height": h, "width": w} for i, (h, w) in enumerate(sizes)]
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco_gt = COCO()
            coco_gt.dataset = {"images": images, "annotations": gts, "categories": categories}
            coco_gt.createIndex()
            evaluator = COCOeval(coco_gt, coco_gt.loadRes(dets), iouType="segm")
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        return torch.tensor(float(evaluator.stats[self._STATS_INDEX[self.iou_threshold]]))
