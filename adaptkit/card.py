"""The adapter's model card (`README.md`): what a Hub visitor reads, and what the Hub indexes.

Built with huggingface_hub's `ModelCard` / `ModelCardData`, so the YAML metadata follows the Hub's
conventions (`base_model` as a list, `library_name: peft`, a `pipeline_tag` from the codec, the
base's licence, a `model-index` of the torchmetrics results) and parses back with `ModelCard.load`.
It is written at train time (validation metrics) and rebuilt at push time, when the evaluations,
prediction grid and training curve found beside the adapter go along.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from adaptkit.record import AdapterMeta, is_hub_id

#: The Hub pipeline tag for a codec's outputs (codecs not named here produce images: image-to-image).
PIPELINE_TAGS = {"binary_mask": "image-segmentation", "semantic": "image-segmentation",
                 "instances": "image-segmentation", "depth": "depth-estimation", "keypoints": "keypoint-detection"}

#: Licence metadata of the bases adaptkit knows; a base not named here is described as `other`.
_SD3_LICENSE = {"license": "other", "license_name": "stabilityai-ai-community",
                "license_link": "https://huggingface.co/stabilityai/stable-diffusion-3-medium-diffusers/blob/main/"
                                "LICENSE.md"}
_ADAPTKIT_LICENSE = {"license": "apache-2.0"}
BASE_LICENSES = {"diception": _SD3_LICENSE, "default": _ADAPTKIT_LICENSE, "tiny": _ADAPTKIT_LICENSE}

#: Where an adapter's placeholder id is shown before it has a Hub repo.
LOCAL_PLACEHOLDER = "path/to/this/adapter"


@dataclass
class Evaluation:
    """One evaluation of the adapter: torchmetrics values on a named split of a named data set."""

    split: str
    metrics: dict[str, float]
    images: int | None = None
    dataset: str = ""


def base_models(base: dict[str, Any]) -> list[str]:
    """The Hub ids an adapter's base is made of (SD3-medium + DICEPTION for the released model)."""
    if base.get("generalist") == "diception":
        candidates = [base.get("sd3", ""), base.get("weights", "")]
    else:
        candidates = [base.get("generalist", "")]
    return [c for c in candidates if c and is_hub_id(c)]


def _data_source(recipe: dict[str, Any]) -> tuple[str, str]:
    """(dataset type, dataset name) for the model-index: a Hub dataset id where there is one."""
    data = recipe.get("data", {})
    source = data.get("source", "folder")
    if source == "hf":
        return data.get("path", ""), data.get("path", "")
    if source == "synth":
        return "adaptkit-synth", f"adaptkit synthetic world: {data.get('synth_task', '')}"
    return f"{source}", Path(str(data.get("path", ""))).name or source


def card_data(meta: AdapterMeta, evaluations: Sequence[Evaluation] = ()) -> ModelCardData:
    """The YAML metadata: base models, library, pipeline tag, licence, tags and the model-index."""
    pipeline_tag = PIPELINE_TAGS.get(meta.codec, "image-to-image")
    dataset_type, dataset_name = _data_source(meta.recipe)
    results = [EvalResult(task_type=pipeline_tag, dataset_type=dataset_type,
                          dataset_name=evaluation.dataset or dataset_name, dataset_split=evaluation.split,
                          metric_type=name, metric_name=name, metric_value=round(float(value), 6))
               for evaluation in evaluations for name, value in evaluation.metrics.items()]
    bases = base_models(meta.base)
    return ModelCardData(
        model_name=meta.name, base_model=bases or None, library_name="peft", pipeline_tag=pipeline_tag,
        tags=["adaptkit", "lora", "diception", "perception", meta.codec.replace("_", "-")],
        eval_results=results or None, **BASE_LICENSES.get(meta.base.get("generalist", ""), {"license": "other"}),
        **({"base_model_relation": "adapter"} if bases else {}))


def validation_evaluation(meta: AdapterMeta) -> list[Evaluation]:
    """The best validation point recorded at train time (the step is not a metric)."""
    values = {k: v for k, v in meta.metrics.items() if k != "step"}
    return [Evaluation("validation", values, len(meta.samples.get("val", [])))] if values else []


def _table(rows: Sequence[tuple[Any, ...]], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def build_card(meta: AdapterMeta, evaluations: Sequence[Evaluation] = (), images: dict[str, str] | None = None,
               repo_id: str | None = None, sweep: dict[str, Any] | None = None) -> ModelCard:
    """The whole card. `images` maps 'grid' / 'curve' to paths inside the repo; `sweep` is the optional
    `sweep` record of `adaptkit.json` (a sweep's best trial)."""
    images = images or {}
    evaluations = [*validation_evaluation(meta), *evaluations]
    recipe, where = meta.recipe, repo_id or LOCAL_PLACEHOLDER
    data, train, adapter = recipe.get("data", {}), recipe.get("train", {}), recipe.get("adapter", {})
    shots = {split: len(ids) for split, ids in meta.samples.items() if ids}
    percent = 100.0 * meta.trainable_parameters / max(meta.base_parameters, 1)
    base = meta.base
    base_rows = [(key, f"`{value}`") for key, value in base.items() if value not in (None, "")]
    base_rows.append(("weight fingerprint (checked at load)", f"`{meta.base_fingerprint}`"))
    data_where = data.get("path") or data.get("synth_task", "")
    sections = [
        f"# {meta.name}",
        f"A LoRA adapter (peft) for the DICEPTION-style generalist `{base.get('generalist')}` that answers the task "
        f"prompt `{meta.prompt}` with the `{meta.codec}` colour encoding, trained with "
        f"adaptkit on {shots.get('train', 0)} labelled images. It adapts "
        f"{meta.trainable_parameters:,} parameters ({percent:.2f}% of the transformer); the base stays frozen.",
        "## Task\n" + _table([("prompt", f"`{meta.prompt}`"), ("codec", f"`{meta.codec}`"),
                              ("codec arguments", f"`{meta.codec_args}`"), ("objective", f"`{meta.objective}`")],
                             ("", "")),
        "## Data\n" + _table([("source", f"`{data.get('source')}` `{data_where}`"),
                              *((f"{split} images", count) for split, count in shots.items()),
                              ("selection seed", data.get("seed")), ("horizontal flips", data.get("hflip"))],
                             ("", "")),
        "## Training\n" + _table([("LoRA rank / alpha / dropout",
                                   f"{adapter.get('rank')} / {adapter.get('alpha')} / {adapter.get('dropout')}"),
                                  ("adapted layers", f"`{adapter.get('targets')}`"),
                                  *((key, _value(train.get(key))) for key in
                                    ("steps", "batch_size", "lr", "warmup", "precision", "seed") if key in train)],
                                 ("", "")),
        "## Inference\n" + _table([(key, value) for key, value in meta.inference.items()], ("setting", "value")),
    ]
    if sweep:
        params = sweep.get("best_params") or sweep.get("params") or {}
        rows = [(key, _value(value)) for key, value in params.items()]
        extra = [(key, _value(value)) for key, value in sweep.items()
                 if key not in ("best_params", "params") and not isinstance(value, dict | list)]
        sections.append("## Sweep\nThis adapter is the best trial of a hyper-parameter sweep.\n\n"
                        + _table(rows + extra, ("parameter", "value")))
    if evaluations:
        default_data = _data_source(recipe)[1]
        rows = [(e.split, e.dataset or default_data, name, f"{value:.4f}")
                for e in evaluations for name, value in e.metrics.items()]
        sections.append("## Results\ntorchmetrics values; `validation` is the best validation point during "
                        "training.\n\n" + _table(rows, ("split", "data", "metric", "value")))
    if images.get("grid"):
        sections.append(f"## Predictions\nColumns: input / prediction / target.\n\n![predictions]({images['grid']})")
    if images.get("curve"):
        sections.append(f"## Training curve\n![training curve]({images['curve']})")
    sections.append("## Base\n" + _table(base_rows, ("", "")))
    sections.append(f"""## Use
```bash
pip install adaptkit
adaptkit predict {where} images/ --out predictions/          # masks, depth maps, ... in native formats
adaptkit eval {where} --data my-labelled-folder             # images/ and masks/ with matching stems
```
```python
from adaptkit import AdaptedModel
model = AdaptedModel.from_pretrained("{where}")   # loads its base and checks the weight fingerprint
outputs = model.predict(["image.png"])            # decoded outputs at each input's size
```
With plain peft, onto the same base's denoiser (see the adaptkit README):
```python
from peft import PeftModel
from adaptkit import load_generalist
generalist = load_generalist("{base.get('generalist')}")
generalist.denoiser = PeftModel.from_pretrained(generalist.denoiser, "{where}")
```""")
    return ModelCard(f"---\n{card_data(meta, evaluations).to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")
