"""One candidate GGUF vocabulary: everything llama.cpp's tokenizer reads, before it is written.

Export builds several candidates for a tokenizer (tokenizer model x pre-tokenizer x space prefix), writes each into a
vocabulary-only GGUF, and keeps the first whose llama.cpp tokenization equals the HF tokenizer's on probe texts
(see tokenizer_probe.py). A plan is plain data so it can be written to a probe file and to the real file alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# llama.cpp token types (gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class VocabPlan:
    model: str  # tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str  # tokenizer.ggml.pre: llama.cpp's pre-tokenizer name ("default" for SentencePiece)
    tokens: list[str]
    types: list[int]
    source: str  # where the vocabulary came from, for the report
    scores: list[float] | None = None  # SentencePiece: llama.cpp merges the highest-scoring pair first
    merges: list[str] | None = None  # byte-level BPE: "left right", in rank order
    add_space_prefix: bool | None = None  # SentencePiece: prepend a space to the text (and after each special)
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        prefix = "" if self.add_space_prefix is None else f", add_space_prefix={str(self.add_space_prefix).lower()}"
        return f"{self.model}/{self.pre}{prefix}"

    def fit(self, rows: int, where: str) -> None:
        """One token per embedding row, as llama.cpp requires: pad with UNUSED entries; refuse a tokenizer whose ids
        run past the embedding (the model cannot embed them, so the export would be wrong whatever we did)."""
        from qlora_kit.errors import UsageError

        used = [i for i, t in enumerate(self.types) if t != UNUSED]
        if used and used[-1] >= rows:
            raise UsageError(f"{where}: the tokenizer has token ids up to {used[-1]} ({self.tokens[used[-1]]!r}) but "
                             f"the model's embedding has {rows} rows; resize the embedding "
                             "(model.resize_token_embeddings) or drop the extra tokens before exporting")
        del self.tokens[rows:], self.types[rows:]
        if self.scores is not None:
            del self.scores[rows:]
        for i in range(len(self.tokens), rows):
            self.tokens.append(f"[PAD{i}]")
            self.types.append(UNUSED)
            if self.scores is not None:
                self.scores.append(-1000.0)
        seen: dict[str, int] = {}
        for i, token in enumerate(self.tokens):  # llama.cpp aborts the process on a repeated token string
            if token in seen:
                raise UsageError(f"{where}: token {token!r} appears twice (ids {seen[token]} and {i}); llama.cpp "
                                 "needs every token string to be unique")
            seen[token] = i

    def write(self, writer) -> None:
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        writer.add_token_types(self.types)
        if self.merges:
            writer.add_token_merges(self.merges)
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)
