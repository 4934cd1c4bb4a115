"""Rebuild the tokenizer fixtures in this folder: small tokenizers with the STRUCTURE of each family's real one.

    PYTHONPATH=. python tests/assets/tokenizers/build.py

No hub access is possible here, so none of these is a real vocabulary. Each copies its family's real tokenizer.json
structure (model type, normalizer, pre-tokenizer regex, byte fallback, decoder, post-processor, special tokens and
where their ids sit) and is trained on the shipped tiny chat data plus a few lines of digits, code and non-Latin
text, with a vocabulary of a few hundred tokens. SentencePiece families are trained with sentencepiece using the
real trainer settings (BPE, byte fallback, split digits, identity normalization, whitespace kept) and converted by
transformers' own converter; every fixture is then saved by transformers 5 `save_pretrained`, which writes
tokenizer.json and no tokenizer.model, as a fine-tune reaches export. See README.md for the faithfulness notes.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXTRA_TEXT = [
    "Numbers 1 12 123 1234 12345 2026 3.14159 1,000,000 -42 007 " * 3,
    "def f(x):\n    return x ** 2  # square\n\tif a != b:\n        print('ok')\n",
    "Привет мир. こんにちは世界。 你好，世界。 Ελληνικά. Äpfel café naïve señor.",
    "   indented   text\n\n\nwith   runs    of     spaces",
]
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                   "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
                   "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
LLAMA3_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                   "{{ m['content'] | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
                   "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
CHATML_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                   "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
MISTRAL_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} "
                    "[/INST]{% elif m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}{% endif %}"
                    "{% endfor %}")
GEMMA_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' "
                  "else 'user' }}\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}"
                  "<start_of_turn>model\n{% endif %}")
PHI3_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% else %}{{ eos_token }}{% endif %}")


def corpus() -> list[str]:
    from qlora_kit.model.builtin import tiny_corpus

    return tiny_corpus() + EXTRA_TEXT * 5


def byte_level_bpe(regex: str | None, vocab_size: int, first_specials: list[str], ignore_merges: bool = False):
    """A byte-level BPE tokenizer; `regex` None means GPT-2's pattern inside ByteLevel."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    if regex is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=first_specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def save_fast(tok, out: Path, template: str | None, **kwargs) -> None:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
    if template:
        fast.chat_template = template
    fast.save_pretrained(out)


def build_llama3(out: Path) -> None:
    """Llama 3: BPE with ignore_merges, the Llama 3 split regex + ByteLevel, specials after the base vocabulary,
    a TemplateProcessing post-processor adding <|begin_of_text|>."""
    from tokenizers import AddedToken, processors

    from qlora_kit.gguf.vocab.vocab import LLAMA3_REGEX

    tok = byte_level_bpe(LLAMA3_REGEX, 700, [], ignore_merges=True)
    tok.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in LLAMA3_SPECIALS])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    save_fast(tok, out, LLAMA3_TEMPLATE, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")


def build_llama3_gguf_hybrid(out: Path, llama3: Path) -> None:
    """What transformers writes when it builds a tokenizer from a GGUF vocabulary: BPE with byte_fallback true but
    a ByteLevel pre-tokenizer and decoder. Made by exactly that path: the Llama 3 fixture's GGUF vocabulary, loaded
    with AutoTokenizer(gguf_file=...), saved."""
    from transformers import AutoTokenizer

    from qlora_kit.gguf.vocab.tokenizer_probe import write_vocab_only
    from qlora_kit.gguf.vocab.vocab import candidates, effective_tokenizer_json

    hf = AutoTokenizer.from_pretrained(llama3)
    plan = candidates(llama3, effective_tokenizer_json(hf, llama3 / "tokenizer.json"), True)[0]
    with tempfile.TemporaryDirectory() as tmp:
        import gguf

        path = Path(tmp) / "vocab.gguf"
        writer = gguf.GGUFWriter(str(path), "llama")
        writer.add_name("llama3")
        for key in ("block_count", "context_length", "embedding_length", "feed_forward_length", "head_count"):
            getattr(writer, f"add_{key}")(64 if key != "block_count" else 1)
        writer.add_head_count_kv(1)
        writer.add_layer_norm_rms_eps(1e-5)
        plan.write(writer)
        gguf.SpecialVocab(llama3, load_merges=False).add_to_gguf(writer, quiet=True)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        writer.close()
        AutoTokenizer.from_pretrained(tmp, gguf_file="vocab.gguf").save_pretrained(out)


def build_qwen2(out: Path) -> None:
    """Qwen 2/2.5/3: NFC normalizer, the Qwen 2 split regex (single digits) + ByteLevel, specials after the base
    vocabulary; transformers loads it as Qwen2Tokenizer."""
    from tokenizers import AddedToken, normalizers

    from qlora_kit.gguf.vocab.vocab import QWEN2_REGEX

    tok = byte_level_bpe(QWEN2_REGEX, 700, [])
    tok.normalizer = normalizers.NFC()
    tok.add_special_tokens([AddedToken(s, normalized=False, special=True)
                            for s in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")])
    tok.add_tokens([AddedToken(s, normalized=False, special=False) for s in ("<think>", "</think>")])
    save_fast(tok, out, CHATML_TEMPLATE, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    _set_config(out, tokenizer_class="Qwen2Tokenizer", bos_token=None, add_prefix_space=False)


def build_tekken(out: Path) -> None:
    """Mistral Nemo (tekken): the tekken regex + ByteLevel, control tokens FIRST (<unk>, <s>, </s>, [INST], ...,
    <SPECIAL_n>) as in the real file's first 1000 ids, BOS added by the post-processor."""
    from tokenizers import processors

    from qlora_kit.gguf.vocab.vocab import TEKKEN_REGEX

    specials = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]"] + [f"<SPECIAL_{i}>" for i in range(10, 20)]
    tok = byte_level_bpe(TEKKEN_REGEX, 720, specials)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", 1)])
    save_fast(tok, out, MISTRAL_TEMPLATE, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def sentencepiece(out: Path, cls: str, dummy_prefix: bool, ids: dict, user_defined: list[str],
                  specials: list[str], template: str, added: list[dict] | None = None, **config) -> None:
    """Train a real SentencePiece BPE model with the family's trainer settings, convert it with transformers,
    save without tokenizer.model."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(corpus()), model_prefix=f"{tmp}/sp", vocab_size=520, model_type="bpe",
            byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True,
            remove_extra_whitespaces=False, normalization_rule_name="identity", character_coverage=1.0,
            add_dummy_prefix=dummy_prefix, user_defined_symbols=user_defined, minloglevel=2, **ids)
        Path(f"{tmp}/sp.model").rename(f"{tmp}/tokenizer.model")
        Path(f"{tmp}/tokenizer_config.json").write_text(json.dumps({"tokenizer_class": cls, **config}))
        tokenizer = AutoTokenizer.from_pretrained(tmp)
        if specials:
            tokenizer.add_special_tokens({"additional_special_tokens": specials})
        for token in added or []:
            from tokenizers import AddedToken

            tokenizer.add_tokens([AddedToken(**token)], special_tokens=token.get("special", False))
        tokenizer.chat_template = template
        tokenizer.save_pretrained(out)
    assert not (out / "tokenizer.model").exists()


def build_llama2(out: Path) -> None:
    """Llama 2 / Mistral v0.1-v0.3: SentencePiece BPE, dummy prefix, <unk> <s> </s> at 0-2."""
    sentencepiece(out, "LlamaTokenizer", True, dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1), [],
                  [], MISTRAL_TEMPLATE, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                  add_bos_token=True, add_eos_token=False, legacy=True)


def build_gemma(out: Path, gemma3: bool) -> None:
    """Gemma 2 / Gemma 3: SentencePiece BPE without dummy prefix, <pad> <eos> <bos> <unk> at 0-3, whitespace-run
    and turn markers as user-defined pieces (the real model has 31 space runs and 31 newline runs)."""
    runs = ["▁▁", "▁▁▁", "▁▁▁▁", "\n\n", "\n\n\n"]
    specials = ["<start_of_turn>", "<end_of_turn>"] + (["<start_of_image>", "<end_of_image>"] if gemma3 else [])
    ids = dict(pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
               unk_piece="<unk>")
    sentencepiece(out, "GemmaTokenizer", False, ids, runs + specials, specials, GEMMA_TEMPLATE, bos_token="<bos>",
                  eos_token="<eos>", unk_token="<unk>", pad_token="<pad>",
                  add_bos_token=True, add_eos_token=False)


def build_phi3(out: Path) -> None:
    """Phi-3: Llama 2's SentencePiece vocabulary plus added tokens at 32000+ (<|endoftext|>, <|assistant|>, ...,
    <|end|>, <|user|>), the chat markers special with rstrip as in the real file."""
    added = [dict(content=c, special=True, rstrip=c != "<|endoftext|>", normalized=False)
             for c in ("<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|system|>", "<|end|>", "<|user|>")]
    sentencepiece(out, "LlamaTokenizer", True, dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1), [], [],
                  PHI3_TEMPLATE, added=added, bos_token="<s>", eos_token="<|endoftext|>", unk_token="<unk>",
                  pad_token="<|endoftext|>", add_bos_token=False, add_eos_token=False, legacy=False)


def _set_config(out: Path, **values) -> None:
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text())
    for key, value in values.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


BUILDERS = {"llama3": build_llama3, "qwen2": build_qwen2, "tekken": build_tekken, "llama2": build_llama2,
            "gemma2": lambda out: build_gemma(out, False), "gemma3": lambda out: build_gemma(out, True),
            "phi3": build_phi3}


def main(names: list[str]) -> None:
    for name in names or [*BUILDERS, "llama3-gguf"]:
        out = HERE / name
        shutil.rmtree(out, ignore_errors=True)
        if name == "llama3-gguf":
            build_llama3_gguf_hybrid(out, HERE / "llama3")
        else:
            BUILDERS[name](out)
        for extra in ("special_tokens_map.json",):
            (out / extra).unlink(missing_ok=True)
        size = sum(f.stat().st_size for f in out.iterdir())
        print(f"{name}: {sorted(f.name for f in out.iterdir())} {size / 1024:.0f} KiB")


if __name__ == "__main__":
    main(sys.argv[1:])
