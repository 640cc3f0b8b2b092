"""Text encoder wrapper: the real packaged MiniLM (semantics, mask, cache), and T5 / CLIP from a local path."""

from __future__ import annotations

import shutil

import pytest
import torch

from model.text import TextConfig, TextEncoder, caption_key, minilm_path, pad_embeddings

CAPTIONS = [
    "a dog runs along the beach at sunset",
    "a puppy running on the sand by the sea in the evening",
    "a spreadsheet of quarterly tax figures on a computer screen",
]


@pytest.fixture(scope="module")
def minilm():
    return TextEncoder(TextConfig())


def _pooled(emb) -> torch.Tensor:
    m = emb.mask[..., None].float()
    v = (emb.tokens * m).sum(1) / m.sum(1)
    return torch.nn.functional.normalize(v, dim=-1)


def test_minilm_is_the_packaged_model_and_frozen(minilm):
    assert (minilm_path() / "model.safetensors").is_file()
    assert minilm.dim == 384
    assert not minilm.model.training
    assert not any(p.requires_grad for p in minilm.model.parameters())


def test_similar_captions_are_closer_than_unrelated(minilm):
    v = _pooled(minilm(CAPTIONS))
    sim = v @ v.T
    assert sim[0, 1] > sim[0, 2] + 0.2
    assert sim[0, 1] > sim[1, 2] + 0.2


def test_mask_matches_token_lengths(minilm):
    captions = ["a cat", "a long caption about a red car driving through a rainy city street at night"]
    emb = minilm(captions)
    lengths = [len(minilm.tokenizer(c)["input_ids"]) for c in captions]  # with [CLS] and [SEP]
    assert emb.mask.sum(1).tolist() == lengths
    assert emb.tokens.shape == (2, max(lengths), 384)
    assert torch.count_nonzero(emb.tokens[0, lengths[0]:]) == 0  # padding is zero
    assert emb.mask.dtype == torch.bool
    padded = minilm(captions, pad_to=40)
    assert padded.tokens.shape == (2, 40, 384) and padded.mask.sum(1).tolist() == lengths


def test_truncation_to_max_length(tmp_path):
    enc = TextEncoder(TextConfig(max_length=8))
    emb = enc(["word " * 50])
    assert emb.mask.sum().item() == 8


def test_cache_returns_identical_tensors_and_skips_the_encoder(minilm, tmp_path):
    enc = TextEncoder(TextConfig(cache_dir=str(tmp_path / "cache")))
    first = enc(CAPTIONS[:2])
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2
    # the batch is order- and batch-independent: a caption encodes the same alone as in a batch
    alone = enc.__class__._encode(enc, [CAPTIONS[1]])[0]
    torch.testing.assert_close(first.tokens[1, : alone.shape[0]], alone, atol=1e-5, rtol=1e-5)

    calls = []
    real = enc._encode
    enc._encode = lambda caps: calls.append(caps) or real(caps)
    second = enc(CAPTIONS[:2])
    assert calls == []  # all from memory
    assert torch.equal(second.tokens, first.tokens) and torch.equal(second.mask, first.mask)

    fresh = TextEncoder(TextConfig(cache_dir=str(tmp_path / "cache")))  # a new process: from disk
    fresh._encode = lambda caps: calls.append(caps) or real(caps)
    third = fresh([CAPTIONS[1], CAPTIONS[0], CAPTIONS[1]])
    assert calls == []
    assert torch.equal(third.tokens[0], first.tokens[1]) and torch.equal(third.tokens[1], first.tokens[0])
    fresh([CAPTIONS[2], CAPTIONS[2]])
    assert calls == [[CAPTIONS[2]]]  # a new caption is encoded once, even if repeated in the batch


def test_cache_key_depends_on_encoder_length_and_text():
    base = caption_key("m", 256, "a cat")
    assert base == caption_key("m", 256, "a cat")
    assert len({base, caption_key("m", 128, "a cat"), caption_key("n", 256, "a cat"), caption_key("m", 256, "a dog")}) == 4


def test_pad_embeddings():
    emb = pad_embeddings([torch.ones(2, 3), torch.ones(4, 3) * 2])
    assert emb.tokens.shape == (2, 4, 3)
    assert emb.mask.tolist() == [[True, True, False, False], [True] * 4]
    assert emb.tokens[0, 2:].abs().sum() == 0 and (emb.tokens[1] == 2).all()


def _save_with_minilm_tokenizer(model, path) -> None:
    """Save a tiny random encoder with the packaged BERT tokenizer files beside it (no download)."""
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_path() / name, path / name)


def test_t5_encoder_from_a_local_path(tmp_path):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    cfg = T5Config(vocab_size=30522, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=1, num_heads=4)
    _save_with_minilm_tokenizer(T5ForConditionalGeneration(cfg), tmp_path)
    enc = TextEncoder(TextConfig(path=str(tmp_path)))
    assert type(enc.model).__name__ == "T5EncoderModel"  # the decoder is never built
    emb = enc(["a cat", "a dog on a skateboard"])
    assert emb.tokens.shape[0] == 2 and emb.tokens.shape[2] == 32
    assert emb.mask.sum(1).tolist() == [len(enc.tokenizer(c)["input_ids"]) for c in ["a cat", "a dog on a skateboard"]]
    assert torch.isfinite(emb.tokens).all() and emb.tokens[0, 0].abs().sum() > 0
    assert not (emb.tokens[0, :2] - emb.tokens[1, :2]).abs().max() == 0  # different captions differ


def test_clip_text_encoder_from_a_local_path(tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, eos_token_id=102, bos_token_id=101)
    _save_with_minilm_tokenizer(CLIPTextModel(cfg), tmp_path)
    enc = TextEncoder(TextConfig(path=str(tmp_path), max_length=77))
    assert type(enc.model).__name__ == "CLIPTextModel"
    emb = enc(["a red apple"])
    assert emb.tokens.shape[2] == 32 and emb.mask.all()
