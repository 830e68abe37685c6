"""A decoder as a sequence classifier: a Llama base with a new head on its last token before the padding, from a
directory (a hub checkpoint) or from the offline SmolLM2 GGUF (``teacher.model: smollm2-135m``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from objectives import load_classifier
from objectives.students import load_causal_lm, load_tokenizer
from tests.conftest import sentiment_csv, tiny_llama_base


def _texts(tmp_path: Path) -> list[str]:
    lines = Path(sentiment_csv(tmp_path / "reviews.csv", rows=24)).read_text().splitlines()[1:]
    return [line.rsplit(",", 1)[0] for line in lines]


def test_a_decoder_without_a_pad_token_becomes_a_classifier_that_ignores_padding(tmp_path: Path) -> None:
    texts = _texts(tmp_path)
    base = tiny_llama_base(tmp_path / "llama", texts)
    tokenizer = load_tokenizer(base)
    assert tokenizer.pad_token == tokenizer.eos_token == "<eos>"  # set where the checkpoint has none
    torch.manual_seed(0)
    model = load_classifier(base, 3).eval()
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.config.num_labels == 3
    assert model.config.pad_token_id == tokenizer.eos_token_id
    lm = load_causal_lm(base)
    assert torch.equal(model.model.embed_tokens.weight, lm.model.embed_tokens.weight)  # the decoder's own weights
    rows = [texts[0], "a dull film", texts[1], "warm"]
    batch = tokenizer(rows, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # some rows padded on the right
    with torch.no_grad():
        padded = model(**batch).logits
        alone = torch.cat([model(**tokenizer([text], return_tensors="pt")).logits for text in rows])
    assert torch.allclose(padded, alone, atol=1e-5)  # each row's score is read at its own last token


@pytest.mark.slow  # loads and de-quantises the 135M GGUF twice (about a minute on 2 cores)
def test_smollm2_gguf_is_a_classifier_of_its_own_decoder(tmp_path: Path) -> None:
    tokenizer = load_tokenizer("smollm2-135m")
    torch.manual_seed(0)
    model = load_classifier("smollm2-135m", 2).eval()
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.config.num_hidden_layers == 30
    assert model.config.pad_token_id == tokenizer.pad_token_id is not None
    assert not hasattr(model.config, "quantization_config")  # saved and reloaded as a plain model
    lm = load_causal_lm("smollm2-135m")
    assert torch.equal(model.model.layers[29].mlp.up_proj.weight, lm.model.layers[29].mlp.up_proj.weight)
    del lm
    batch = tokenizer(["a warm and witty film", "dull"], padding=True, return_tensors="pt")
    with torch.no_grad():
        before = model(**batch).logits
    model.save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    with torch.no_grad():
        after = load_classifier(str(tmp_path / "teacher"), 2).eval()(**batch).logits
    assert torch.equal(before, after)
