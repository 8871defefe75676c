"""Build tiny, seeded causal-LM rerankers (Qwen3, Gemma2) on disk for tests.

They are random ``Qwen3ForCausalLM`` / ``Gemma2ForCausalLM`` checkpoints (2
layers, hidden 32) with a small byte-level BPE tokenizer trained here, holding
single ``yes`` and ``no`` tokens and the prompt's special tokens, saved as a
``PreTrainedTokenizerFast``. sentence-transformers loads them as causal-LM
``CrossEncoder`` models (a ``LogitScore`` over the LM head), exactly as it loads
Qwen3-Reranker or bge-reranker-v2-gemma, so they exercise the real code path.
Building one takes well under a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

QWEN3_RERANKER_TEMPLATE = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n<Instruct>: "
    '{{ (messages | selectattr("role", "eq", "system") | map(attribute="content") | first)'
    ' or "Given a web search query, retrieve relevant passages that answer the query" }}\n'
    '<Query>: {{ messages | selectattr("role", "eq", "query") | map(attribute="content") | first }}\n'
    '<Document>: {{ messages | selectattr("role", "eq", "document") | map(attribute="content") | first }}'
    "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
)
"""A chat template in the shape sentence-transformers' Qwen3-Reranker uses: query/document roles,
the instruction from an optional system message, the documented default otherwise."""

GEMMA_RERANKER_TEMPLATE = (
    "{{ bos_token }}"
    'A: {{ messages | selectattr("role", "eq", "query") | map(attribute="content") | first }}\n'
    'B: {{ messages | selectattr("role", "eq", "document") | map(attribute="content") | first }}\n'
    "Given a query A and a passage B, determine whether the passage contains an answer to the "
    "query by providing a prediction of either yes or no."
)
"""bge-reranker-v2-gemma's prompt as a chat template; it renders no system message (no instruction)."""

_CORPUS = [
    "yes no yes no Yes No",
    "what do cats eat? Cats eat meat and fish.",
    "Paris is the capital of France. The capital of China is Beijing.",
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided.",
    'Note that the answer can only be "yes" or "no".',
    "Given a web search query, retrieve relevant passages that answer the query",
    "<Instruct>: <Query>: <Document>: A: B: system user assistant",
    "Given a query A and a passage B, determine whether the passage contains an answer",
    "to the query by providing a prediction of either yes or no.",
    "rank medical abstracts; retrieve scientific claims that support or refute",
]
_SPECIALS = ["<pad>", "<bos>", "<eos>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]


def _tokenizer(chat_template: str | None) -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS * 3, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        model_max_length=512,
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    for word in ("yes", "no"):
        if tokenizer.convert_tokens_to_ids(word) in (None, tokenizer.unk_token_id):
            msg = f"the tiny tokenizer has no single {word!r} token"
            raise AssertionError(msg)
    return tokenizer


def build_tiny_causal_reranker(
    path: str | Path,
    *,
    architecture: Literal["qwen3", "gemma2"] = "qwen3",
    chat_template: str | None = None,
    seed: int = 0,
    hidden_size: int = 32,
    num_layers: int = 2,
) -> Path:
    """Write a tiny seeded causal-LM reranker into ``path`` and return it.

    ``chat_template`` is saved with the tokenizer (``None``: the tokenizer has
    none, as the original Qwen3-Reranker checkpoints' generic template would be
    for a pair). The LM head rows of ``yes`` and ``no`` are re-drawn with a
    wide spread so that scores are well separated.
    """
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer(chat_template)
    common = {
        "vocab_size": len(tokenizer),  # type: ignore[arg-type]
        "hidden_size": hidden_size,
        "intermediate_size": hidden_size * 2,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": hidden_size // 4,
        "max_position_embeddings": 512,
        "pad_token_id": tokenizer.pad_token_id,  # type: ignore[attr-defined]
        "bos_token_id": tokenizer.bos_token_id,  # type: ignore[attr-defined]
        "eos_token_id": tokenizer.eos_token_id,  # type: ignore[attr-defined]
        "tie_word_embeddings": False,
    }
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        if architecture == "qwen3":
            model: torch.nn.Module = Qwen3ForCausalLM(Qwen3Config(**common))
        else:
            model = Gemma2ForCausalLM(Gemma2Config(**common, sliding_window=64))
        model.eval()
        with torch.no_grad():
            head = model.get_output_embeddings().weight  # type: ignore[operator]
            for word in ("yes", "no"):
                head[tokenizer.convert_tokens_to_ids(word)].normal_(0.0, 1.5)  # type: ignore[attr-defined]
    finally:
        torch.random.set_rng_state(generator_state)
    model.save_pretrained(str(out))  # type: ignore[attr-defined]
    tokenizer.save_pretrained(str(out))  # type: ignore[attr-defined]
    return out
