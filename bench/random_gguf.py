"""A GGUF of a real model's shape with random weights: that model's speed without moving its weights.

Issue 3 asks for the production model's speed on a GPU machine, which cannot download it. Speed
depends on the shape and the quantization, not on the values, so this writes random Q4_K blocks
(zero-mean weights of a trained model's spread, so activations stay finite) in the Llama-3-8B shape, with the tokenizer
and chat template of a donor GGUF. The donor may be a tokenizer-only file this script writes: a few
MB, small enough to carry to such a machine. llama.cpp's own vocabulary files (its models/ folder,
ggml-vocab-llama-bpe.gguf is Llama-3's) carry no chat template: --chat-template llama-3 adds one.

    python bench/random_gguf.py --donor MODEL.gguf --tokenizer-only tokenizer.gguf [--chat-template llama-3]
    python bench/random_gguf.py --donor tokenizer.gguf --shape llama-3-8b --out llama3-8b-random.gguf
    python bench/throughput.py --model llama3-8b-random.gguf --rows 200     # labels are noise: time only

Every matrix is Q4_K (a real Q4_K_M file keeps some in Q6_K) and the vocabulary is the donor's.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SHAPES = {      # llama.cpp's hyperparameters of the architecture 'llama'
    "llama-3-8b": dict(n_layer=32, n_embd=4096, n_ff=14336, n_head=32, n_head_kv=8, n_ctx=8192, rope_base=500000.0),
    "tiny": dict(n_layer=2, n_embd=256, n_ff=512, n_head=4, n_head_kv=2, n_ctx=2048, rope_base=10000.0),
}
Q4_K_BLOCK = (256, 144)      # values, bytes: f16 d, f16 dmin, 12 bytes of scales, 128 of 4-bit values
# Every sub-block gets scale 2 and min 15 (6-bit fields packed as ggml's get_scale_min_k4 reads them),
# so a weight is d * (2q - 15) for a random q in 0..15: zero mean, and with d = dmin = 2e-3 a spread
# of 0.018, as trained weights have. Weights of nonzero mean make activations grow past f16's range,
# which CUDA's kernels use: every logit came out NaN on an H200.
D = np.float16(2e-3)
SCALES = np.array([2] * 4 + [15] * 4 + [2 | 15 << 4] * 4, dtype=np.uint8)
CHAT_TEMPLATES = {           # what instruction-tuned GGUFs of these families carry
    "llama-3": "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + "
               "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
               "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
               "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
}


def tokenizer_fields(donor: Path) -> dict[str, tuple[object, list]]:
    """{key: (value, value types)} of the donor's tokenizer and chat template."""
    import gguf
    reader = gguf.GGUFReader(str(donor))
    return {key: (field.contents(), field.types) for key, field in reader.fields.items()
            if key.startswith("tokenizer.")}


def _copy(writer, fields) -> None:
    for key, (value, types) in fields.items():
        writer.add_key_value(key, value, types[0], sub_type=types[-1] if len(types) > 1 else None)


def write_tokenizer(donor: Path, out: Path, chat_template: str | None = None) -> None:
    import gguf
    writer = gguf.GGUFWriter(str(out), arch="llama")
    fields = tokenizer_fields(donor)
    if chat_template:
        fields["tokenizer.chat_template"] = (CHAT_TEMPLATES[chat_template], [gguf.GGUFValueType.STRING])
    _copy(writer, fields)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()


def random_q4_k(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    values, size = Q4_K_BLOCK
    blocks = rng.integers(0, 256, size=(rows * cols // values, size), dtype=np.uint8)
    blocks[:, 0:4] = np.array([D, D], dtype=np.float16).view(np.uint8)
    blocks[:, 4:16] = SCALES
    return blocks.reshape(rows, cols // values * size)


def write_model(donor: Path, shape: str, out: Path, seed: int = 0) -> None:
    import gguf
    s = SHAPES[shape]
    fields = tokenizer_fields(donor)
    n_vocab = len(fields["tokenizer.ggml.tokens"][0])
    n_embd, n_ff, head_dim = s["n_embd"], s["n_ff"], s["n_embd"] // s["n_head"]
    kv = s["n_head_kv"] * head_dim
    writer = gguf.GGUFWriter(str(out), arch="llama")
    writer.add_name(f"random {shape}")
    writer.add_block_count(s["n_layer"])
    writer.add_context_length(s["n_ctx"])
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(s["n_head"])
    writer.add_head_count_kv(s["n_head_kv"])
    writer.add_rope_freq_base(s["rope_base"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    _copy(writer, fields)

    rng = np.random.default_rng(seed)
    q4_k = gguf.GGMLQuantizationType.Q4_K
    ones = np.ones(n_embd, dtype=np.float32)
    writer.add_tensor("token_embd.weight", random_q4_k(n_vocab, n_embd, rng), raw_dtype=q4_k)
    for i in range(s["n_layer"]):
        for name, rows, cols in (("attn_q", n_embd, n_embd), ("attn_k", kv, n_embd), ("attn_v", kv, n_embd),
                                 ("attn_output", n_embd, n_embd), ("ffn_gate", n_ff, n_embd),
                                 ("ffn_up", n_ff, n_embd), ("ffn_down", n_embd, n_ff)):
            writer.add_tensor(f"blk.{i}.{name}.weight", random_q4_k(rows, cols, rng), raw_dtype=q4_k)
        writer.add_tensor(f"blk.{i}.attn_norm.weight", ones)
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", ones)
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", random_q4_k(n_vocab, n_embd, rng), raw_dtype=q4_k)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--donor", type=Path, required=True, help="a GGUF whose tokenizer and chat template to copy")
    ap.add_argument("--tokenizer-only", type=Path, help="write only the donor's tokenizer to this file")
    ap.add_argument("--chat-template", choices=sorted(CHAT_TEMPLATES),
                    help="with --tokenizer-only: the chat template to give a donor that has none")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama-3-8b")
    ap.add_argument("--out", type=Path, help="the random model's file")
    args = ap.parse_args()
    if args.tokenizer_only:
        write_tokenizer(args.donor, args.tokenizer_only, args.chat_template)
    elif args.out:
        write_model(args.donor, args.shape, args.out)
    else:
        ap.error("give --out (a random model) or --tokenizer-only")


if __name__ == "__main__":
    main()
