"""The released DICEPTION's path at its real widths: a release-shaped folder (`Generalist.save_release`) cut to two
blocks at 128 px loads as the release does, trains, reloads and predicts, all in bf16; and the fixes that path
needed, each on the tiny model. The full 24-block run is `benchmarks/real_size.py`."""

from __future__ import annotations

import json
import warnings

import diffusers.models.embeddings as embeddings
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tiny_recipes import shadow_recipe

from adaptkit.adapters import AdaptedModel, resolve_targets
from adaptkit.generalist import (
    DICEPTION_WEIGHTS_FILE,
    SD3_MEDIUM_TRANSFORMER_CONFIG,
    Generalist,
    load_diception_checkpoint,
    weights_fingerprint,
)
from adaptkit.memory import SD3_VAE_CONFIG
from adaptkit.recipe import load_recipe
from adaptkit.tiny import TinySpec, build_tiny_generalist, real_size_spec
from adaptkit.training import train

RESOLUTION = 128
#: Where each key group of DICEPTION_v1.pth lands in adaptkit's denoiser.
RELEASE_PREFIXES = {"transformer": "transformer.", "point_embedder": "point_encoder.mlp.",
                    "not_seg_embeddings": "point_encoder.not_seg.", "seg_embeddings": "point_encoder.seg."}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """The CI-sized cut of a release folder: SD3-medium's widths (1536, joint 4096, pooled 2048, CLIP-L 768,
    CLIP-G 1280, T5 4096), two blocks, written as a user downloads it."""
    folder = tmp_path_factory.mktemp("release") / "diception"
    build_tiny_generalist(real_size_spec(layers=2, resolution=RESOLUTION), torch.bfloat16).save_release(folder)
    return folder


@pytest.mark.slow
def test_the_release_folder_has_sd3_mediums_configs_and_loads_every_key(release):
    transformer_config = json.loads((release / "transformer" / "config.json").read_text())
    assert {k: transformer_config[k] for k in SD3_MEDIUM_TRANSFORMER_CONFIG} == \
        {**SD3_MEDIUM_TRANSFORMER_CONFIG, "num_layers": 2}
    vae_config = json.loads((release / "vae" / "config.json").read_text())
    assert {k: vae_config[k] for k in SD3_VAE_CONFIG} == {k: v for k, v in SD3_VAE_CONFIG.items()}
    widths = [json.loads((release / f"text_encoder{s}" / "config.json").read_text()) for s in ("", "_2", "_3")]
    assert [widths[0]["hidden_size"], widths[1]["hidden_size"], widths[2]["d_model"]] == [768, 1280, 4096]

    state = load_diception_checkpoint(release / DICEPTION_WEIGHTS_FILE)
    release_keys = {RELEASE_PREFIXES[part] + key: tensor for part, tensors in state.items() if part in RELEASE_PREFIXES
                    for key, tensor in tensors.items()}
    release_keys["point_encoder.gaussian_matrix"] = state["positional_encoding_gaussian_matrix"]
    assert {str(t.dtype) for t in release_keys.values()} == {"torch.bfloat16"}  # the release's file is bf16
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an unexpected key is a warning: none may come
        generalist = Generalist.from_diception(release, release, resolution=RESOLUTION, device="cpu",
                                               dtype=torch.bfloat16)
    held = generalist.denoiser.state_dict()
    # the release's keys are exactly the denoiser's: none unexpected, none missing ...
    assert set(release_keys) == set(held)
    assert all(torch.equal(held[key], tensor) for key, tensor in release_keys.items())
    # ... and what it leaves to the base (VAE, text encoders) comes from the base folder
    vae = load_file(str(release / "vae" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(generalist.vae.state_dict()[k], v) for k, v in vae.items())  # fp32 on a CPU, exact
    assert generalist.prompts.text_encoder_3.config.d_model == 4096
    assert {str(p.dtype) for p in generalist.vae.parameters()} == {"torch.float32"}
    assert {str(p.dtype) for n, p in generalist.named_parameters() if not n.startswith("vae.")} == {"torch.bfloat16"}


@pytest.mark.slow
def test_the_ci_cut_trains_reloads_and_predicts_in_bf16(release, tmp_path):
    recipe = load_recipe(shadow_recipe(
        "real-size", base={"generalist": "diception", "sd3": str(release), "weights": str(release),
                           "resolution": RESOLUTION},
        # one step and no validation set: this CPU has no native bf16, so one bf16 backward at the real width
        # takes ~45 s (fp32: ~1 s); validation sampling is tested on the tiny base
        data={"synth_resolution": 64, "train_shots": 2, "val_shots": 0, "hflip": False},
        adapter={"rank": 32, "alpha": 32, "targets": "attention"},
        train={"steps": 1, "batch_size": 1, "val_every": 1, "warmup": 0, "precision": "bf16-mixed",
               "gradient_checkpointing": True, "accelerator": "cpu"},
        inference={"batch_size": 1}))
    result = train(recipe, tmp_path / "run", progress=False)
    assert result.trainable_parameters == 32 * 2 * 1536 * (8 + 7)  # a full block and the last (no to_add_out)
    record = json.loads((tmp_path / "run" / "resources.json").read_text())
    modules = record["modules"]
    assert modules["transformer"]["dtype"] == modules["point encoder"]["dtype"] == ["bfloat16"]
    assert modules["vae"]["dtype"] == ["float32"]  # a CPU keeps the VAE in fp32: its bf16 convolutions crawl
    assert modules["lora"]["dtype"] == ["float32"] and modules["lora"]["elements"] == result.trainable_parameters
    assert all(modules[f"text encoder{s}"]["freed"] for s in (" (CLIP-L)", " 2 (CLIP-G)", " 3 (T5)"))
    assert record["optimizer_state_bytes"] >= 2 * 4 * result.trainable_parameters  # AdamW's two fp32 moments
    assert record["seconds_per_step"] > 0 and record["peak_rss_bytes"] > modules["transformer"]["bytes"]

    model = AdaptedModel.from_pretrained(result.adapter, device="cpu")  # reloads onto a bf16 base: no fp32 copy
    base = model.generalist.denoiser.get_base_model()
    assert {str(p.dtype) for p in base.transformer.parameters() if p.requires_grad is False} == {"torch.bfloat16"}
    assert model.generalist.prompts.text_encoder is None  # the adapter's prompt embeddings stand in
    images = [np.random.default_rng(i).random((h, w, 3)) for i, (h, w) in enumerate([(90, 120), (128, 64)])]
    outputs = model.predict_encoded(images, progress=False)
    assert [o[0].image.shape for o in outputs] == [(90, 120, 3), (128, 64, 3)]
    assert all(np.isfinite(o[0].image).all() for o in outputs)


def test_a_release_loads_without_computing_the_position_grid(tiny, tmp_path, monkeypatch):
    """The release's checkpoint holds the position grid; loading must not first compute it (0.85 GB at 192 px)."""
    devices = []
    original = embeddings.get_2d_sincos_pos_embed

    def recording(*args, **kwargs):
        grid = original(*args, **kwargs)
        devices.append(grid.device.type)
        return grid

    monkeypatch.setattr(embeddings, "get_2d_sincos_pos_embed", recording)
    folder = tiny.save_release(tmp_path / "release", dtype=torch.float32)  # fp32: the very weights come back
    loaded = Generalist.from_diception(folder, folder, resolution=tiny.config.resolution,
                                       max_sequence_length=tiny.config.max_sequence_length, device="cpu")
    assert devices and set(devices) == {"meta"}
    assert loaded.fingerprint() == tiny.fingerprint() and loaded.fingerprint("vae") == tiny.fingerprint("vae")


def test_the_attention_preset_adapts_a_one_block_transformer():
    # the only block of a one-block SD3 transformer is context_pre_only: it has no to_add_out
    generalist = build_tiny_generalist(TinySpec(layers=1))
    targets = resolve_targets(generalist.denoiser, "attention")
    assert len(targets) == 7 and not any(name.endswith("to_add_out") for name in targets)


def test_the_fingerprint_hashes_in_chunks_with_the_same_result(tiny, monkeypatch):
    whole = weights_fingerprint(tiny.denoiser)
    monkeypatch.setattr("adaptkit.generalist._HASH_CHUNK", 7)  # every tensor spans many chunks
    assert weights_fingerprint(tiny.denoiser) == whole


@pytest.mark.slow
def test_an_adapter_trained_in_bf16_mixed_reloads_on_a_bf16_base(tmp_path):
    """Training under bf16-mixed holds a bf16 base and records its fingerprint; the adapter must load onto the
    same bf16 weights (the CPU's fp32 default held other weights and refused it)."""
    recipe = load_recipe(shadow_recipe("bf16", data={"train_shots": 2, "val_shots": 1},
                                       train={"steps": 2, "batch_size": 2, "val_every": 2, "warmup": 0,
                                              "precision": "bf16-mixed", "accelerator": "cpu"}))
    result = train(recipe, tmp_path / "run", progress=False)
    model = AdaptedModel.from_pretrained(result.adapter, device="cpu")
    assert model.generalist.dtype == torch.bfloat16
    assert model.predict_encoded([np.zeros((32, 32, 3))], progress=False)[0][0].image.shape == (32, 32, 3)


def test_a_cpu_keeps_the_vae_exact_in_fp32_and_out_of_autocast():
    """bf16 convolutions without native CPU support are ~300x slower: the VAE stays fp32, never cast through bf16,
    and a bf16-mixed run's autocast does not reach it."""
    generalist = build_tiny_generalist(TinySpec())
    vae_weights = {k: v.clone() for k, v in generalist.vae.state_dict().items()}
    generalist.to_runtime("cpu", torch.bfloat16)
    assert generalist.dtype == torch.bfloat16 and generalist.vae.dtype == torch.float32
    assert all(torch.equal(generalist.vae.state_dict()[k], v) for k, v in vae_weights.items())
    pixels = torch.rand(1, 3, generalist.config.resolution, generalist.config.resolution) * 2 - 1
    plain = generalist.encode_posterior(pixels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = generalist.encode_posterior(pixels)
        decoded = generalist.decode_latents(mixed[0])
    assert mixed[0].dtype == torch.float32 and torch.equal(mixed[0], plain[0]) and torch.equal(mixed[1], plain[1])
    assert torch.equal(decoded, generalist.decode_latents(plain[0]))
