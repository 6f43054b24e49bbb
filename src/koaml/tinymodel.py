"""Build the demo's tiny Llama-architecture model offline and deterministically.

The tokenizer is a byte-level BPE trained on bundled text with every digit its own token
(as Llama 3 and Qwen do), so arithmetic stays learnable; the weights are randomly initialised
from a fixed seed. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}

# A ChatML template so that `template: model` and lm-eval's --apply_chat_template work on the tiny model.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_tokenizer(corpus: list[str], vocab_size: int):
    """Train a byte-level BPE tokenizer on ``corpus`` and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [*list(SPECIAL_TOKENS.values()), "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    bos = SPECIAL_TOKENS["bos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    fast.chat_template = CHATML_TEMPLATE
    fast.model_max_length = 512
    return fast


def load_spec(path: str | Path) -> dict:
    """The tiny-model spec file ``path``, checked against its schema (tiny_model.schema.json: no unknown key, a
    typo such as ``hidden_sise`` would silently build the default width) and the architecture's divisibility,
    before transformers sees it; defaults filled in."""
    from koaml.configfiles import ConfigError, empty_sections, fill_defaults, load_yaml, schema, validate

    spec = empty_sections(load_yaml(path), "tiny_model")
    source = str(path)
    validate(spec, "tiny_model", source)
    arch = spec["architecture"]
    heads, kv_heads = arch["num_attention_heads"], arch.get("num_key_value_heads", arch["num_attention_heads"])
    if arch["hidden_size"] % heads:
        raise ConfigError(
            f"{source}: architecture.hidden_size: {arch['hidden_size']} is not a multiple of "
            f"architecture.num_attention_heads ({heads}); each head takes an equal share of the width"
        )
    if heads % kv_heads:
        raise ConfigError(
            f"{source}: architecture.num_key_value_heads: {kv_heads} does not divide architecture.num_attention_heads "
            f"({heads}); each key/value head serves an equal group of attention heads"
        )
    missing = [f for f in spec["tokenizer"]["corpus"] if not Path(f).is_file()]
    if missing:
        raise ConfigError(f"{source}: tokenizer.corpus: {', '.join(missing)}: file not found")
    return fill_defaults(spec, schema("tiny_model"))


def tiny_config(spec: dict, **tokens):
    """The LlamaConfig of a tiny-model spec (its ``architecture``), with the tokenizer's ``tokens`` when known."""
    from transformers import LlamaConfig

    return LlamaConfig(**tokens, **spec["architecture"])


def build_tiny_model(spec: dict, out_dir: str | Path) -> None:
    """Write a tokenizer and a randomly initialised LlamaForCausalLM described by ``spec``.

    ``spec`` is a checked tiny-model spec (:func:`load_spec`): ``seed``, ``tokenizer: {corpus: [files],
    vocab_size}`` and ``architecture`` (LlamaConfig keyword arguments).
    """
    import torch
    from transformers import LlamaForCausalLM

    corpus = []
    for path in spec["tokenizer"]["corpus"]:
        corpus.extend(Path(path).read_text(encoding="utf-8").splitlines())
    tokenizer = train_tokenizer(corpus, spec["tokenizer"]["vocab_size"])

    torch.manual_seed(spec["seed"])
    config = tiny_config(
        spec,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
