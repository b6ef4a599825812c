"""CLIP-D, Inception features and the pairwise VLM judge, offline on tiny random models saved to disk."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlm3d_ttg.errors import ModelNotFoundError
from vlm3d_ttg.metrics import (
    clip_d,
    clip_d_per_item,
    clip_distance,
    combine_orders,
    judge_logit_difference,
    judge_pair,
    load_clip,
    load_inception,
    load_judge,
    summarize_judgements,
)
from vlm3d_ttg.metrics.judge import answer_token_ids, judge_messages
from vlm3d_ttg.tiny.hunyuan import folder_digest
from vlm3d_ttg.tiny.metric_models import (
    write_random_inception_weights,
    write_tiny_clip,
    write_tiny_judge,
)


@pytest.fixture(scope="module")
def metric_models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("metric_models")


@pytest.fixture(scope="module")
def tiny_clip_path(metric_models_dir):
    return write_tiny_clip(metric_models_dir / "clip", seed=0)


@pytest.fixture(scope="module")
def tiny_judge_path(session_tiny_judge_path):
    return session_tiny_judge_path


@pytest.fixture(scope="module")
def inception_path(metric_models_dir):
    return write_random_inception_weights(metric_models_dir / "inception.safetensors", seed=0)


@pytest.fixture(scope="module")
def embedder(tiny_clip_path):
    return load_clip(tiny_clip_path, device="cpu")


@pytest.fixture(scope="module")
def judge(tiny_judge_path):
    return load_judge(tiny_judge_path, device="cpu")


def random_views(seed: int, n: int = 2, size: int = 40) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --- tiny model writers -----------------------------------------------------------------------


def test_tiny_writers_are_deterministic_per_seed(tmp_path, tiny_clip_path, tiny_judge_path):
    assert folder_digest(write_tiny_clip(tmp_path / "clip_again", seed=0)) == folder_digest(tiny_clip_path)
    assert folder_digest(write_tiny_clip(tmp_path / "clip_seed1", seed=1)) != folder_digest(tiny_clip_path)
    assert folder_digest(write_tiny_judge(tmp_path / "judge_again", seed=0)) == folder_digest(tiny_judge_path)
    assert folder_digest(write_tiny_judge(tmp_path / "judge_seed1", seed=1)) != folder_digest(tiny_judge_path)


def test_random_inception_weights_are_deterministic(tmp_path, inception_path):
    again = write_random_inception_weights(tmp_path / "again.safetensors", seed=0)
    assert again.read_bytes() == inception_path.read_bytes()


def test_existing_folder_is_not_rewritten(tiny_clip_path):
    before = {p.name: p.stat().st_mtime_ns for p in tiny_clip_path.iterdir()}
    write_tiny_clip(tiny_clip_path, seed=1)
    assert {p.name: p.stat().st_mtime_ns for p in tiny_clip_path.iterdir()} == before


# --- CLIP-D -----------------------------------------------------------------------------------


def test_clip_distance_of_identical_embeddings_is_zero():
    embedding = torch.randn(16, generator=torch.Generator().manual_seed(0))
    assert clip_distance(embedding, torch.stack([embedding, 3.0 * embedding])) == pytest.approx(0.0, abs=1e-12)
    orthogonal = torch.tensor([0.0, 1.0])
    assert clip_distance(torch.tensor([1.0, 0.0]), torch.stack([torch.tensor([2.0, 0.0]), orthogonal])) == pytest.approx(0.5)
    assert clip_distance(torch.tensor([1.0, 0.0]), torch.tensor([[-1.0, 0.0]])) == pytest.approx(2.0)


def test_clip_d_on_tiny_clip_matches_the_model_called_directly(embedder):
    views = random_views(0, n=3)
    prompt = "a wooden chair with four legs"
    processor, model = embedder.processor, embedder.model
    with torch.no_grad():
        text = model.get_text_features(**processor.tokenizer([prompt], return_tensors="pt")).pooler_output[0]
        pixels = processor(images=[Image.fromarray((v.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for v in views], return_tensors="pt")
        images = model.get_image_features(pixel_values=pixels["pixel_values"]).pooler_output
    expected = 1.0 - torch.nn.functional.cosine_similarity(images, text[None], dim=-1).mean().item()
    assert clip_d(embedder, prompt, views) == pytest.approx(expected, abs=1e-5)
    assert 0.0 < expected < 2.0


def test_clip_d_per_item_pairs_prompts_with_their_views(embedder):
    prompts = ["a red car", "a tall lamp"]
    views = [random_views(1), random_views(2)]
    per_item = clip_d_per_item(embedder, prompts, views)
    assert per_item.shape == (2,)
    assert per_item[1] == pytest.approx(clip_d(embedder, prompts[1], views[1]), abs=1e-6)
    assert per_item[0] != pytest.approx(clip_d(embedder, prompts[0], views[1]), abs=1e-6)


def test_clip_embeddings_accept_pil_numpy_and_torch_alike(embedder):
    views = random_views(3, n=2)
    as_uint8 = (views * 255).round().to(torch.uint8)
    as_numpy = as_uint8.permute(0, 2, 3, 1).numpy()
    as_pil = [Image.fromarray(image) for image in as_numpy]
    reference = embedder.image_embeddings(views)
    for same in (as_uint8, as_numpy, as_pil):
        assert torch.allclose(embedder.image_embeddings(same), reference, atol=1e-6)


def test_missing_clip_raises_model_not_found(tmp_path):
    with pytest.raises(ModelNotFoundError, match="huggingface-cli download"):
        load_clip(tmp_path / "no_such_model")
    with pytest.raises(ModelNotFoundError, match="hub cache"):
        load_clip("vlm3d-ttg-tests/not-a-cached-model")


# --- Inception --------------------------------------------------------------------------------


def test_inception_pool3_features_from_a_local_state_dict(inception_path):
    # batch_size=2 puts the copy of image 0 in another batch: features must not depend on batching.
    extractor = load_inception(inception_path, device="cpu", batch_size=2)
    images = random_views(4, n=3, size=64)
    images[2] = images[0]
    features = extractor(images)
    assert features.shape == (3, 2048) and features.dtype == np.float64
    assert np.isfinite(features).all() and features.std() > 1e-3  # signal, not vanishing activations
    np.testing.assert_allclose(features[2], features[0], atol=1e-5)
    assert np.abs(features[1] - features[0]).max() > 1e-4


def test_missing_inception_weights_raise_with_how_to_get(tmp_path):
    with pytest.raises(ModelNotFoundError, match="IMAGENET1K_V1"):
        load_inception(tmp_path / "missing.pth")


# --- judge: aggregation -----------------------------------------------------------------------


def test_combine_orders_counts_only_consistent_answers():
    assert combine_orders(+1.0, -1.0) == 1.0  # guided preferred as A and as B
    assert combine_orders(-1.0, +1.0) == 0.0  # base preferred as A and as B
    assert combine_orders(+1.0, +1.0) == 0.5  # always A: position, not quality
    assert combine_orders(-1.0, -1.0) == 0.5  # always B
    assert combine_orders(0.0, -1.0) == 0.5


def simulated_judge(quality_first: np.ndarray, quality_second: np.ndarray, position_bias: float, noise: np.ndarray) -> np.ndarray:
    """z_A − z_B of a judge that sees the quality difference, plus a pull towards position A, plus noise."""
    return (quality_first - quality_second) + position_bias + noise


def test_both_order_aggregation_cancels_position_bias_exactly_without_noise():
    rng = np.random.default_rng(0)
    base, guided = rng.normal(size=200), rng.normal(size=200)
    truth = float((guided > base).mean())
    zero = np.zeros(200)
    for bias in (0.0, 1e-3):  # below every |quality gap| here: every item is decided by quality
        assert np.abs(guided - base).min() > bias
        summary = summarize_judgements(
            simulated_judge(guided, base, bias, zero), simulated_judge(base, guided, bias, zero), n_resamples=200
        )
        assert summary.win_rate == pytest.approx(truth) and summary.ties == 0
    for bias in (0.5, 2.0):
        plus = summarize_judgements(simulated_judge(guided, base, bias, zero), simulated_judge(base, guided, bias, zero), n_resamples=200)
        minus = summarize_judgements(simulated_judge(guided, base, -bias, zero), simulated_judge(base, guided, -bias, zero), n_resamples=200)
        # A pull towards A and the same pull towards B give the same verdicts: the bias drops out.
        assert plus.win_rate == minus.win_rate and plus.ties == minus.ties > 0
        # Asking in one order only (guided always shown as A) would turn the bias into wins.
        one_order = float((simulated_judge(guided, base, bias, zero) > 0).mean())
        assert one_order > truth + 0.1


def test_both_order_aggregation_is_unmoved_by_position_bias_under_noise():
    rng = np.random.default_rng(1)
    n = 4000
    base = rng.normal(size=n)
    guided = base + 0.6  # guided is better on every item
    noise_1, noise_2 = rng.normal(scale=1.0, size=(2, n))
    results = {}
    for bias in (-1.0, 0.0, 1.0):
        results[bias] = summarize_judgements(
            simulated_judge(guided, base, bias, noise_1), simulated_judge(base, guided, bias, noise_2), n_resamples=300
        )
    assert results[1.0].win_rate > 0.6 and results[-1.0].win_rate > 0.6  # still sees that guided is better
    assert results[1.0].win_rate == pytest.approx(results[-1.0].win_rate, abs=0.03)
    assert results[1.0].first_position_rate > 0.75 > 0.25 > results[-1.0].first_position_rate  # the bias is reported
    assert results[1.0].tie_rate > results[0.0].tie_rate


def test_base_against_base_calibrates_to_one_half_even_with_a_biased_judge():
    rng = np.random.default_rng(2)
    quality = rng.normal(size=300)
    noise = rng.normal(scale=0.1, size=(2, 300))
    summary = summarize_judgements(
        simulated_judge(quality, quality, 0.8, noise[0]), simulated_judge(quality, quality, 0.8, noise[1]), n_resamples=300
    )
    assert summary.win_rate == 0.5 and summary.tie_rate == 1.0
    assert summary.ci_low == summary.ci_high == 0.5


def test_summary_counts_and_ci():
    rng = np.random.default_rng(3)
    first, second = rng.normal(0.3, 1.0, 80), rng.normal(-0.3, 1.0, 80)
    summary = summarize_judgements(first, second, n_resamples=500, seed=4)
    assert summary.wins + summary.losses + summary.ties == summary.n_items == 80
    assert summary.win_rate == pytest.approx((summary.wins + 0.5 * summary.ties) / 80)
    assert summary.ci_low <= summary.win_rate <= summary.ci_high and summary.ci_high - summary.ci_low > 0.02
    assert summarize_judgements(first, second, n_resamples=500, seed=4) == summary


# --- judge: the model call --------------------------------------------------------------------


def test_answer_letters_must_be_single_tokens(judge):
    tokenizer = judge.processor.tokenizer
    id_a, id_b = answer_token_ids(tokenizer)
    assert tokenizer.decode([id_a]) == "A" and tokenizer.decode([id_b]) == "B"
    with pytest.raises(ValueError, match="tokens"):
        answer_token_ids(tokenizer, ("A", "Both"))


def test_judge_logit_difference_is_the_answer_log_odds(judge):
    views_a, views_b = random_views(5), random_views(6)
    difference = judge_logit_difference(judge, "a teapot", views_a, views_b)
    # Independently: a full forward pass, log-softmax over the whole vocabulary at the last position.
    chat = judge.processor.apply_chat_template(judge_messages("a teapot", 2, 2), add_generation_prompt=True, tokenize=False)
    pixels = [(v * 255).round().to(torch.uint8) for v in torch.cat([views_a, views_b])]
    inputs = judge.processor(text=[chat], images=[pixels], return_tensors="pt", add_special_tokens=False)
    assert (inputs["input_ids"][0] == judge.processor.tokenizer.bos_token_id).sum() == 1
    with torch.no_grad():
        log_probs = torch.log_softmax(judge.model(**inputs).logits[0, -1].double(), dim=-1)
    id_a, id_b = judge.answer_token_ids
    assert difference == pytest.approx(float(log_probs[id_a] - log_probs[id_b]), abs=1e-4)


def test_judge_pair_asks_both_orders_and_sees_the_images(judge):
    base, guided = random_views(7), random_views(8)
    pair = judge_pair(judge, "a chair", base, guided)
    assert np.isfinite([pair.diff_guided_first, pair.diff_base_first]).all()
    assert pair.diff_guided_first != pytest.approx(pair.diff_base_first, abs=1e-6)  # swapping the images matters
    same = judge_pair(judge, "a chair", base, base)
    assert same.diff_guided_first == pytest.approx(same.diff_base_first, abs=1e-6)
    assert same.outcome == 0.5  # base vs base cannot be a win
