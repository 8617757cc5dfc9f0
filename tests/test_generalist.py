"""The generalist: DICEPTION's architecture, checkpoint loading, saving, prompts and sampling."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import SD3Transformer2DModel
from PIL import Image

from adaptkit.generalist import (
    DICEPTION_WEIGHTS_FILE,
    SD3_MEDIUM_TRANSFORMER_CONFIG,
    CheckpointError,
    Generalist,
    PointPromptEncoder,
    load_diception_checkpoint,
)
from adaptkit.prompts import PromptCache

PROMPT = "[[image2depth]]"


def _image(seed: int = 0, size: tuple[int, int] = (40, 28)) -> np.ndarray:
    return np.random.default_rng(seed).random((size[1], size[0], 3), dtype=np.float32)


def _outputs(generalist: Generalist, **kwargs) -> np.ndarray:
    kwargs = {"steps": 2, "guidance": 2.0, "seed": 3, "progress": False, **kwargs}
    return np.stack([p.image for p in generalist.predict([_image(0), _image(1)], PROMPT, **kwargs)])


def test_sd3_medium_config_has_the_published_size_and_lora_budget():
    with torch.device("meta"):
        transformer = SD3Transformer2DModel(**SD3_MEDIUM_TRANSFORMER_CONFIG)
    assert sum(p.numel() for p in transformer.parameters()) == 2_028_328_000
    targets = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
    linears = [m for name, m in transformer.named_modules()
               if isinstance(m, torch.nn.Linear) and name.split("attn.", 1)[-1] in targets]
    assert len(linears) == 191
    per_rank = sum(m.in_features + m.out_features for m in linears)
    assert per_rank == 586_752  # rank 32 ~ 0.93 % of the transformer


def test_diception_checkpoint_reproduces_the_model(tiny, tmp_path):
    base = tiny.save_pretrained(tmp_path / "base")
    weights = tiny.save_diception_checkpoint(tmp_path / DICEPTION_WEIGHTS_FILE)
    loaded = Generalist.from_diception(base=base, weights=weights, resolution=tiny.config.resolution,
                                       max_sequence_length=tiny.config.max_sequence_length, device="cpu")
    np.testing.assert_array_equal(_outputs(loaded), _outputs(tiny))
    # a folder holding the .pth is accepted too
    from_folder = Generalist.from_diception(base=base, weights=tmp_path, resolution=tiny.config.resolution,
                                            max_sequence_length=tiny.config.max_sequence_length, device="cpu")
    assert from_folder.fingerprint() == tiny.fingerprint()


def test_save_and_load_round_trip_is_bit_exact(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "model")
    loaded = Generalist.from_pretrained(tmp_path / "model", device="cpu")
    for name, tensor in tiny.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    np.testing.assert_array_equal(_outputs(loaded), _outputs(tiny))
    assert loaded.config == tiny.config


def _one_step_by_hand(generalist: Generalist, guidance: float) -> torch.Tensor:
    """Euler from sigma 1 to 0 is x0 = noise - v: compute it directly from the denoiser."""
    torch.manual_seed(0)
    condition = torch.randn(1, 16, generalist.latent_size, generalist.latent_size)
    noise = torch.randn_like(condition)
    embeds, pooled = generalist.encode_prompts([PROMPT])
    t = torch.tensor([1000.0])
    with torch.no_grad():
        cond = generalist.denoiser(noise, condition, t, embeds, pooled)
        null_embeds, null_pooled = generalist.encode_prompts([""])
        uncond = generalist.denoiser(noise, condition, t, null_embeds, null_pooled,
                                     null_points=torch.tensor([True]))
        velocity = cond if guidance <= 1.0 else uncond + guidance * (cond - uncond)
        sampled = generalist.sample_latents(condition, embeds, pooled, noise, steps=1, guidance=guidance)
    return sampled, noise - velocity


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_guidance_matches_the_release_formula(tiny, guidance):
    sampled, by_hand = _one_step_by_hand(tiny, guidance)
    torch.testing.assert_close(sampled, by_hand, rtol=1e-5, atol=1e-5)


def test_unconditional_branch_zeroes_point_tokens(tiny):
    torch.manual_seed(1)
    noise = torch.randn(1, 16, tiny.latent_size, tiny.latent_size)
    embeds, pooled = tiny.encode_prompts([PROMPT])
    points = torch.tensor([[[0.5, 0.25]] + [[-1.0, -1.0]] * 4])
    labels = torch.tensor([[1, 0, 0, 0, 0]])
    t = torch.tensor([500.0])
    with torch.no_grad():
        zeroed = tiny.denoiser(noise, noise, t, embeds, pooled, points, labels, torch.tensor([True]))
        padded = tiny.denoiser(noise, noise, t, embeds, pooled, null_points=torch.tensor([True]))
        with_points = tiny.denoiser(noise, noise, t, embeds, pooled, points, labels)
    torch.testing.assert_close(zeroed, padded)  # literal zeros, whatever the points were
    assert not torch.allclose(with_points, padded)


def test_same_seed_same_output_and_seeds_matter(tiny):
    np.testing.assert_array_equal(_outputs(tiny, seed=5), _outputs(tiny, seed=5))
    assert np.abs(_outputs(tiny, seed=5) - _outputs(tiny, seed=6)).max() > 1e-4


def test_deterministic_mode_ignores_the_seed(tiny):
    np.testing.assert_array_equal(_outputs(tiny, seed=1, steps=1, guidance=1.0, deterministic=True),
                                  _outputs(tiny, seed=2, steps=1, guidance=1.0, deterministic=True))


def test_result_does_not_depend_on_the_batch(tiny):
    together = tiny.predict([_image(0), _image(1)], PROMPT, steps=2, seed=0, batch_size=2, progress=False)
    alone = tiny.predict([_image(1)], PROMPT, steps=2, seed=1, batch_size=1, progress=False)
    np.testing.assert_allclose(together[1].image, alone[0].image, atol=1e-5)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16", "1"])
def test_any_image_mode_and_size_comes_back_at_its_size(tiny, tmp_path, mode):
    rgb = (np.random.default_rng(0).random((23, 37, 3)) * 255).astype(np.uint8)
    if mode == "I;16":
        image = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
    else:
        image = Image.fromarray(rgb).convert(mode)
    path = tmp_path / "input.png"
    image.save(path)
    (prediction,) = tiny.predict(path, PROMPT, steps=1, guidance=1.0, progress=False)
    assert prediction.image.shape == (23, 37, 3)
    assert prediction.image.dtype == np.float32
    assert prediction.image.min() >= 0.0 and prediction.image.max() <= 1.0
    assert prediction.source == str(path)


def test_sixteen_bit_input_keeps_its_precision():
    from adaptkit.images import to_rgb_array

    values = np.array([[0, 1, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    array = to_rgb_array(image)
    np.testing.assert_allclose(array[0, :, 0], [0.0, 1 / 65535, 1.0], rtol=1e-6)


@pytest.mark.parametrize(("order", "expected"), [("xy", [10 / 32, 4 / 32]), ("yx", [4 / 32, 10 / 32])])
def test_points_are_normalised_by_the_model_resolution(order, expected):
    encoder = PointPromptEncoder(embed_dim=8, num_frequencies=4, coordinate_order=order)
    # (x=20.9, y=8.2) on a 64 x 64 image -> pixel (10, 4) of the 32 px model input
    points, labels = encoder.normalise([(20.9, 8.2)], (64, 64), 32)
    assert points[0].tolist() == pytest.approx(expected)
    assert points[1:].eq(-1).all() and labels.tolist() == [1, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="outside"):
        encoder.normalise([(64, 3)], (64, 64), 32)
    with pytest.raises(ValueError, match="at most 5"):
        encoder.normalise([(1, 1)] * 6, (64, 64), 32)


def test_points_change_the_prediction(tiny):
    image = _image(4)
    without = tiny.predict(image, "[[image2segmentation]]", steps=1, guidance=1.0, progress=False)[0].image
    with_point = tiny.predict(image, "[[image2segmentation]]", points=[[(5, 5)]], steps=1, guidance=1.0,
                              progress=False)[0].image
    assert np.abs(without - with_point).max() > 1e-5


def test_prompt_cache_lets_the_text_encoders_go(tiny, tmp_path):
    embeds, _pooled = tiny.prompts.encode([PROMPT, ""])
    tiny.prompts.cache.subset([PROMPT, ""]).save(tmp_path / "prompts.safetensors")
    cache = PromptCache.load(tmp_path / "prompts.safetensors")
    assert cache.prompts == [PROMPT, ""]
    torch.testing.assert_close(cache.get(PROMPT)[0], embeds[0], rtol=0, atol=0)

    tiny.save_pretrained(tmp_path / "model")
    light = Generalist.from_pretrained(tmp_path / "model", load_text_encoders=False, device="cpu")
    assert not light.prompts.has_text_encoders
    assert [name for name, _, _ in light.parts()] == ["transformer", "point encoder", "vae"]
    np.testing.assert_array_equal(_outputs(light), _outputs(tiny))  # PROMPT and "" come from the cache
    with pytest.raises(KeyError, match=r"image2normal.*not in the prompt cache"):
        light.predict(_image(), "[[image2normal]]", progress=False)


def test_embeddings_follow_the_sd3_layout(tiny):
    embeds, pooled = tiny.prompts.encode(["[[image2semantic]] person"])
    clip_width = tiny.prompts.text_encoder.config.hidden_size
    tokens = tiny.config.max_sequence_length
    assert embeds.shape == (1, 2 * tokens, tiny.prompts.text_encoder_3.config.d_model)
    assert pooled.shape == (1, 2 * tiny.prompts.text_encoder.config.projection_dim)
    # CLIP-L ++ CLIP-G states are zero-padded to T5's width in the first `tokens` positions
    assert embeds[0, :tokens, 2 * clip_width:].abs().max() == 0
    assert embeds[0, tokens:].abs().max() > 0


# ---------------------------------------------------------------- bad checkpoints
def _write_checkpoint(tiny, path: Path, edit) -> Path:
    tiny.save_diception_checkpoint(path)
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)
    return path


def test_missing_transformer_keys_are_named(tiny, tmp_path):
    path = _write_checkpoint(tiny, tmp_path / "x.pth", lambda s: s["transformer"].pop("proj_out.weight"))
    with pytest.raises(CheckpointError, match=r"transformer.*missing.*proj_out\.weight"):
        Generalist.from_diception(base=tiny.save_pretrained(tmp_path / "base"), weights=path, device="cpu")


def test_wrong_shapes_are_named(tiny, tmp_path):
    def edit(state):
        state["point_embedder"]["2.weight"] = torch.zeros(3, 3)

    path = _write_checkpoint(tiny, tmp_path / "x.pth", edit)
    with pytest.raises(CheckpointError, match=r"point encoder.*wrong shape.*mlp\.2\.weight"):
        Generalist.from_diception(base=tiny.save_pretrained(tmp_path / "base"), weights=path, device="cpu")


def test_missing_top_level_key_is_named(tiny, tmp_path):
    path = _write_checkpoint(tiny, tmp_path / "x.pth", lambda s: s.pop("seg_embeddings"))
    with pytest.raises(CheckpointError, match=r"missing top-level key.*seg_embeddings"):
        load_diception_checkpoint(path)


def test_unexpected_keys_are_reported(tiny, tmp_path):
    path = _write_checkpoint(tiny, tmp_path / "x.pth", lambda s: s["transformer"].update(extra=torch.ones(1)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Generalist.from_diception(base=tiny.save_pretrained(tmp_path / "base"), weights=path,
                                  resolution=32, device="cpu")
    assert any("unexpected key" in str(w.message) and "extra" in str(w.message) for w in caught)


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({"transformer": _RunsCodeWhenUnpickled(marker)}, path)
    with pytest.raises(CheckpointError, match="pickled code"):
        load_diception_checkpoint(path)
    assert not marker.exists()


@pytest.mark.slow
def test_weights_resolve_offline_from_the_hub_cache(tiny, tmp_path):
    """`weights: Canyu/DICEPTION` works with no network once the file is in the Hugging Face cache."""
    snapshot = tmp_path / "hub" / "models--Canyu--DICEPTION" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (tmp_path / "hub" / "models--Canyu--DICEPTION" / "refs").mkdir()
    (tmp_path / "hub" / "models--Canyu--DICEPTION" / "refs" / "main").write_text("0" * 40)
    tiny.save_diception_checkpoint(snapshot / DICEPTION_WEIGHTS_FILE)
    code = "from adaptkit.generalist import resolve_weights; print(resolve_weights('Canyu/DICEPTION'))"
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert Path(result.stdout.strip()) == snapshot / DICEPTION_WEIGHTS_FILE


def test_unavailable_hub_weights_say_what_to_do(tmp_path, monkeypatch):
    from adaptkit.generalist import resolve_weights

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match=r"not a local file or folder.*DICEPTION_v1\.pth"):
        resolve_weights(str(tmp_path / "nowhere" / "x"))
