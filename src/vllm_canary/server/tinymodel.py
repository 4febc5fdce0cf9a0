"""Build a tiny, real Llama model folder that vLLM can serve, with no model hub reachable.

A byte-level BPE tokenizer trained on a small generated corpus, a ChatML chat template and a
2-layer Llama with random weights (~2.4 MB). Two seeds give two model versions whose answers
differ, which is all a canary test needs. Needs torch, transformers and tokenizers, so run it
with the vLLM venv's Python: `python -m vllm_canary.server.tinymodel OUT --seed N` (or the file
path directly; it imports nothing from this package).

`--adapter-of BASE` writes a tiny LoRA adapter for the model folder BASE instead (PEFT's two
files, written with torch + safetensors directly, no PEFT needed): rank 8 on q_proj and v_proj
of every layer, random A and B from the seed, so two seeds give two adapters whose answers
differ from the base's and from each other's (shared notes "vllm-lora").
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
from pathlib import Path

SPECIAL_TOKENS = ["<s>", "</s>", "<unk>", "<pad>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_WORD_TEXT = (
    "the a model server canary release version stable candidate traffic route weight mesh "
    "gateway request token latency error metric rollout promote rollback answer question "
    "user prompt fast slow good bad new old data label score sample quality hello world "
    "is was will can should not and or but with from to of in on for by at as it this that "
    "one two three four five ten hundred percent second minute hour day week cluster pod node"
)
WORDS = _WORD_TEXT.split()
MAX_CONTEXT = 256


def corpus(lines: int = 4000, seed: int = 0) -> list[str]:
    """Deterministic pseudo-sentences: enough text for a ~1000-token BPE vocabulary."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 16))]
        sentence = " ".join(words).capitalize() + rng.choice([".", "?", "!", ","])
        if rng.random() < 0.2:
            sentence += f" {rng.randint(0, 999)}"
        out.append(sentence)
    return out


def build_tokenizer(out: Path, vocab_size: int = 1000) -> int:
    """Train and save the tokenizer; returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=MAX_CONTEXT,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return len(fast)


def build_model(out: Path, vocab_size: int, seed: int) -> None:
    """A 2-layer Llama with random weights (head_dim 32: the least vLLM's CPU attention takes)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    ids = {t: SPECIAL_TOKENS.index(t) for t in SPECIAL_TOKENS}
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=32,
        max_position_embeddings=MAX_CONTEXT,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
        pad_token_id=ids["<pad>"],
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)


def build(out: Path, seed: int) -> Path:
    """Write the model folder at `out` atomically (a half-built folder is never left there)."""
    out = out.resolve()
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        vocab = build_tokenizer(tmp)
        build_model(tmp, vocab, seed)
        (tmp / "tinymodel.json").write_text(json.dumps({"seed": seed, "vocab_size": vocab}) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


LORA_RANK = 8
LORA_ALPHA = 16
LORA_TARGETS = ("q_proj", "v_proj")


def build_adapter_files(out: Path, base: Path, seed: int) -> None:
    """`adapter_config.json` + `adapter_model.safetensors` for the Llama folder `base`.
    Tensor names and shapes are PEFT's: `base_model.model.model.layers.N.self_attn.P.lora_A.weight`
    (rank x in) and `...lora_B.weight` (out x rank)."""
    import torch
    from safetensors.torch import save_file

    config = json.loads((base / "config.json").read_text())
    hidden = int(config["hidden_size"])
    heads, kv_heads = int(config["num_attention_heads"]), int(config["num_key_value_heads"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    out_dims = {"q_proj": heads * head_dim, "v_proj": kv_heads * head_dim}
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(int(config["num_hidden_layers"])):
        for proj in LORA_TARGETS:
            key = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            # Large enough that the adapter visibly changes a random tiny model's answers.
            tensors[f"{key}.lora_A.weight"] = torch.randn(LORA_RANK, hidden, generator=gen) * 0.2
            tensors[f"{key}.lora_B.weight"] = (
                torch.randn(out_dims[proj], LORA_RANK, generator=gen) * 0.2)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    adapter_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": LORA_RANK, "lora_alpha": LORA_ALPHA,
        "lora_dropout": 0.0, "bias": "none", "target_modules": list(LORA_TARGETS),
        "base_model_name_or_path": str(base), "fan_in_fan_out": False, "inference_mode": True,
        "modules_to_save": None, "use_rslora": False, "use_dora": False,
    }
    (out / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2) + "\n")


def build_adapter(out: Path, base: Path, seed: int) -> Path:
    """Write the adapter folder at `out` atomically, like `build`."""
    out, base = out.resolve(), base.resolve()
    if not (base / "config.json").is_file():
        raise SystemExit(f"{base} is not a model folder (no config.json)")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        build_adapter_files(tmp, base, seed)
        (tmp / "tinymodel.json").write_text(json.dumps({"seed": seed, "base": str(base)}) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="model folder to write (replaced if it exists)")
    parser.add_argument("--seed", type=int, default=1, help="weight seed: one per model version")
    parser.add_argument("--adapter-of", type=Path, metavar="BASE",
                        help="write a LoRA adapter for the model folder BASE instead of a model")
    args = parser.parse_args(argv)
    if args.adapter_of is not None:
        print(build_adapter(args.out, args.adapter_of, args.seed))
    else:
        print(build(args.out, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
