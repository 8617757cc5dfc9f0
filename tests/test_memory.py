"""Planning memory: the activation coefficients re-measured on a block, SD3-medium's sizes read from configs, and
`adaptkit check`'s one-line warning when a recipe will not fit the visible GPU (a mocked one)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import yaml
from diffusers import SD3Transformer2DModel

from adaptkit.adapters import add_lora
from adaptkit.cli import main
from adaptkit.generalist import SD3_MEDIUM_TRANSFORMER_CONFIG, InContextDenoiser, PointPromptEncoder
from adaptkit.memory import (
    CHECKPOINT_PER_TOKEN_WIDTH,
    GIB,
    SAVED_PER_TOKEN_WIDTH,
    SD3_TEXT_PARAMETERS,
    SD3_VAE_CONFIG,
    estimate_memory,
    fit_table,
    shapes_from_configs,
)
from adaptkit.recipe import AdapterSection

WIDTH, TEXT_TOKENS = 256, 24


def saved_for_backward(layers: int, precision: str, checkpointing: bool, side: int = 8) -> int:
    """Bytes autograd saves for backward in one forward of a small SD3 denoiser with rank-8 attention LoRA."""
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float32
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(sample_size=side, patch_size=2, in_channels=16, num_layers=layers,
                                        attention_head_dim=64, num_attention_heads=WIDTH // 64, joint_attention_dim=64,
                                        caption_projection_dim=WIDTH, pooled_projection_dim=32, out_channels=16,
                                        pos_embed_max_size=side // 2).to(dtype)
    denoiser = InContextDenoiser(transformer, PointPromptEncoder(embed_dim=WIDTH, num_frequencies=8)).to(dtype)
    denoiser.gradient_checkpointing = checkpointing
    model = add_lora(denoiser, AdapterSection(rank=8, alpha=8, targets="attention"))
    latents = torch.randn(1, 16, side, side, dtype=dtype)
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
        model(latents, latents, torch.full((1,), 1000.0), torch.randn(1, TEXT_TOKENS, 64, dtype=dtype),
              torch.randn(1, 32, dtype=dtype), torch.full((1, 5, 2), -1.0, dtype=dtype),
              torch.zeros(1, 5, dtype=torch.long))
    return sum(size for pointer, size in storages.items() if pointer not in weights)


@pytest.mark.parametrize("precision", ["bf16-mixed", "32"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_activation_coefficients_match_what_autograd_saves(precision, checkpointing):
    # one more full block (the last one is context_pre_only in both models) adds what one block saves
    per_block = saved_for_backward(3, precision, checkpointing) - saved_for_backward(2, precision, checkpointing)
    tokens = 2 * (8 // 2) ** 2 + TEXT_TOKENS + 5
    table = CHECKPOINT_PER_TOKEN_WIDTH if checkpointing else SAVED_PER_TOKEN_WIDTH
    assert per_block / (tokens * WIDTH) == pytest.approx(table[precision], rel=0.15)


def test_sd3_medium_sizes_from_its_configs():
    shapes = shapes_from_configs(SD3_MEDIUM_TRANSFORMER_CONFIG, SD3_VAE_CONFIG, "attention")
    # the published figures: 2,028,328,000 transformer parameters (+ the 192 x 192 x 1536 position grid) and
    # 191 adapted Linear(1536, 1536) layers, 586,752 LoRA parameters per unit of rank
    assert shapes.transformer_parameters == 2_028_328_000 + 192 * 192 * 1536
    assert shapes.lora_parameters_per_rank == 191 * 2 * 1536
    assert shapes.image_tokens(768) == 4608 and shapes.vae_downsampling == 8


def test_checkpointing_and_bf16_are_what_make_768_px_fit_a_24_gb_card():
    shapes = shapes_from_configs(SD3_MEDIUM_TRANSFORMER_CONFIG, SD3_VAE_CONFIG, "attention", SD3_TEXT_PARAMETERS,
                                 text_stored_bytes=2)
    plain = estimate_memory(shapes, 768, 4, 32, "bf16-mixed", gradient_checkpointing=False)
    checkpointed = estimate_memory(shapes, 768, 4, 32, "bf16-mixed", gradient_checkpointing=True)
    assert plain.activations > 8 * checkpointed.activations and plain.weights == checkpointed.weights
    fp32 = estimate_memory(shapes, 768, 1, 32, "32")
    assert fp32.weights == 2 * checkpointed.weights and fp32.text_encoders == 2 * checkpointed.text_encoders
    rows = {(r["run"], r.get("precision"), r.get("checkpointing"), r["batch"]): r for r in fit_table(shapes)}
    assert rows[("train", "bf16-mixed", True, 8)]["fits_24"]
    assert not rows[("train", "bf16-mixed", False, 8)]["fits_40"] and rows[("train", "bf16-mixed", False, 8)]["fits_80"]
    assert not rows[("train", "32", True, 1)]["fits_24"]  # T5-XXL alone is 19 GB in fp32 while it encodes


def _diception_recipe(tmp_path, **train):
    recipe = {"name": "lungs768", "task": {"prompt": "[[image2lung]]", "codec": "binary_mask"},
              "base": {"generalist": "diception", "resolution": 768},
              "data": {"source": "synth", "synth_task": "shadow", "synth_resolution": 32, "train_shots": 4,
                       "val_shots": 2},
              "adapter": {"rank": 32, "alpha": 32}, "train": {"steps": 10, **train}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


@pytest.fixture
def gpu(monkeypatch):
    """A visible GPU of a chosen size, as torch reports one (nothing else of CUDA is used by `check`)."""
    def visible(gib: float) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_properties",
                            lambda index: SimpleNamespace(name=f"Mock {gib:g} GB", total_memory=int(gib * GIB)))
    return visible


@pytest.mark.parametrize(("train", "gib", "setting"), [
    ({"precision": "32", "gradient_checkpointing": True, "batch_size": 1}, 24, "train.precision=bf16-mixed"),
    ({"precision": "bf16-mixed", "gradient_checkpointing": False, "batch_size": 8}, 24,
     "train.gradient_checkpointing=true"),
    ({"precision": "bf16-mixed", "gradient_checkpointing": False, "batch_size": 8}, 40,
     "train.gradient_checkpointing=true"),
])
def test_check_warns_in_one_line_and_names_the_setting_that_fits(capsys, tmp_path, gpu, train, gib, setting):
    gpu(gib)
    assert main(["check", _diception_recipe(tmp_path, **train)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "GPU" in line]
    assert len(warnings) == 1, warnings
    assert f"Mock {gib} GB" in warnings[0] and f"set {setting} " in warnings[0]
    assert "768 px" in warnings[0]


def test_check_says_nothing_when_the_recipe_fits_or_trains_on_the_cpu(capsys, tmp_path, gpu):
    gpu(80)
    assert main(["check", _diception_recipe(tmp_path, gradient_checkpointing=True, batch_size=4)]) == 0
    assert "GPU" not in capsys.readouterr().err
    gpu(8)
    assert main(["check", _diception_recipe(tmp_path, accelerator="cpu")]) == 0
    assert "GPU" not in capsys.readouterr().err


def test_check_says_when_no_setting_fits(capsys, tmp_path, gpu):
    gpu(6)  # less than SD3-medium's weights in bf16 plus its text encoders
    assert main(["check", _diception_recipe(tmp_path)]) == 0
    (warning,) = [line for line in capsys.readouterr().err.splitlines() if "GPU" in line]
    assert "no change of precision, checkpointing or batch size fits it" in warning
