"""Every configs/text_encoder/*.yaml instantiates with hydra, offline."""

from __future__ import annotations

from pathlib import Path

import hydra.utils
import pytest
from omegaconf import DictConfig, OmegaConf

from grounding.text import TextEncoder, default_minilm_path

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
# config name -> folder expected under paths.models_dir
PATH_CONFIGS = {
    "mpnet_base": "mpnet-base",
    "roberta_base": "roberta-base",
    "bert_base_uncased": "bert-base-uncased",
}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _compose(name: str) -> DictConfig:
    """The text_encoder group file with the paths group beside it, as the train config composes them."""
    root = OmegaConf.create(
        {
            "paths": OmegaConf.load(CONFIGS / "paths" / "default.yaml"),
            "text_encoder": OmegaConf.load(CONFIGS / "text_encoder" / f"{name}.yaml"),
        }
    )
    return root.text_encoder


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """A models directory holding the MiniLM saved under each expected folder name."""
    from transformers import AutoModel, AutoTokenizer

    src = str(default_minilm_path())
    tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True)
    model = AutoModel.from_pretrained(src, local_files_only=True)
    root = tmp_path_factory.mktemp("models")
    for folder in PATH_CONFIGS.values():
        model.save_pretrained(root / folder)
        tokenizer.save_pretrained(root / folder)
    return root


def test_group_has_the_four_configs():
    names = {p.stem for p in (CONFIGS / "text_encoder").glob("*.yaml")}
    assert names == {"minilm", *PATH_CONFIGS}
    for name in names:
        cfg = _compose(name)
        assert cfg._target_ == "grounding.text.TextEncoder"
        assert set(cfg) == {
            "_target_",
            "name_or_path",
            "frozen",
            "cache",
            "max_length",
            "word_pool",
            "local_files_only",
        }


def test_minilm_config_instantiates():
    enc = hydra.utils.instantiate(_compose("minilm"))
    assert isinstance(enc, TextEncoder) and enc.frozen and enc.dim == 384
    out = enc(["a brown chair next to the table"])
    assert out.sentence.shape == (1, 384) and out.word_mask.sum() == 7


@pytest.mark.parametrize("name", sorted(PATH_CONFIGS))
def test_path_config_without_files_names_the_path(name, tmp_path, monkeypatch):
    monkeypatch.setenv("GROUNDING_MODELS_DIR", str(tmp_path))
    cfg = _compose(name)
    expected = tmp_path / PATH_CONFIGS[name]
    assert cfg.name_or_path == str(expected)
    with pytest.raises(Exception) as err:
        hydra.utils.instantiate(cfg)
    # hydra wraps constructor errors; the FileNotFoundError is the cause.
    cause = err.value if isinstance(err.value, FileNotFoundError) else err.value.__cause__
    assert isinstance(cause, FileNotFoundError), repr(err.value)
    assert str(expected) in str(cause) and "GROUNDING_MODELS_DIR" in str(cause)


def test_path_config_default_models_dir_without_files(monkeypatch, tmp_path):
    monkeypatch.delenv("GROUNDING_MODELS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # relative default "models" must not exist
    cfg = _compose("mpnet_base")
    assert cfg.name_or_path == "models/mpnet-base"
    with pytest.raises(Exception) as err:
        hydra.utils.instantiate(cfg)
    cause = err.value if isinstance(err.value, FileNotFoundError) else err.value.__cause__
    assert isinstance(cause, FileNotFoundError) and "models/mpnet-base" in str(cause)


@pytest.mark.parametrize("name", sorted(PATH_CONFIGS))
def test_path_config_with_files_encodes(name, models_dir, monkeypatch):
    monkeypatch.setenv("GROUNDING_MODELS_DIR", str(models_dir))
    enc = hydra.utils.instantiate(_compose(name))
    assert isinstance(enc, TextEncoder)
    assert enc.name == str(models_dir / PATH_CONFIGS[name])
    out = enc([["this", "is", "a", "brown", "chair"]])
    assert out.words.shape == (1, 5, enc.dim) and out.word_mask.all()
