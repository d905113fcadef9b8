"""Text side: the offline tokenizer gives real ids, prompts become 226 tokens, long prompts warn."""

import logging

import sentencepiece as spm
from transformers import T5Tokenizer


def test_tokenizer_gives_real_ids_for_real_words(tiny_root):
    tokenizer = T5Tokenizer.from_pretrained(str(tiny_root / "tokenizer"))
    sp = spm.SentencePieceProcessor(model_file=str(tiny_root / "tokenizer" / "spiece.model"))
    text = "A woman smiles warmly at the camera in a sunny park"
    ids = tokenizer(text).input_ids
    assert ids[:-1] == sp.encode(text) and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.unk_token_id not in ids
    assert len(set(ids)) >= 8  # distinct words, distinct ids (a vocab-less tokenizer maps all to unk)
    assert "woman" in tokenizer.decode(ids)


def test_prompts_are_padded_to_226_tokens_and_long_ones_warn(tiny_pipe, caplog):
    ids = tiny_pipe.prompt_encoder.token_ids(["a man", ""])
    assert ids.shape == (2, 226) and (ids[0, 4:] == 0).all()
    with caplog.at_level(logging.WARNING):
        embeds = tiny_pipe.encode_prompts("the person laughs " * 200, "")
    assert "truncated to 226" in caplog.text
    assert embeds.shape == (2, 226, 64)
    assert next(tiny_pipe.prompt_encoder.text_encoder.parameters()).device.type == "cpu"


def test_the_prompt_cache_is_bounded_by_bytes_and_keeps_the_latest(tiny_pipe, monkeypatch):
    import echovideo.pipeline as pipeline

    one = tiny_pipe.encode_prompts("a person waves", "").nbytes
    monkeypatch.setattr(pipeline, "CACHED_PROMPT_BYTES", 2 * one)
    tiny_pipe.prompt_cache.clear()
    for i in range(5):
        tiny_pipe.encode_prompts(f"a person waves {i}", "")
    assert sum(t.nbytes for t in tiny_pipe.prompt_cache.values()) <= 2 * one
    assert list(tiny_pipe.prompt_cache) == [("a person waves 3", ""), ("a person waves 4", "")]
