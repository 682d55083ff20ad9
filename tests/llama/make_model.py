#!/usr/bin/env python3
"""Write a tiny llama-architecture GGUF model with random weights (fixed seed).

    python3 make_model.py OUT.gguf [--seed N]

The model is about 0.55 MB: a SentencePiece-style ("llama") vocabulary of 512 pieces
(<unk>, <s>, </s>, the 256 byte tokens <0x00>..<0xFF>, ASCII characters and word
prefixes), 64-wide embeddings, 2 layers, 4 heads (2 KV heads), a 512-token context, f32
weights and a chat template. llama.cpp loads it and it generates random text.

Two properties make it predictable for tests, whatever the seed:
  * it never emits a control token (so never stops before `max_tokens`) nor a byte
    token (so every generated token is whole ASCII text);
  * no piece contains "<", so a server's check for the stop string "</s>" never holds
    text back.
Both come from one embedding dimension that carries a constant through every layer (no
attention or FFN output writes to it) and that the output matrix weighs strongly against
the tokens to suppress: a bias on the logits, built from plain llama weights.
"""

import argparse
import string

import numpy as np

import gguf

N_VOCAB = 512
N_EMBD = 64
N_LAYER = 2
N_HEAD = 4
N_HEAD_KV = 2
N_FF = 128
N_CTX = 512

UNK, BOS, EOS = 0, 1, 2
# The embedding dimension that holds a constant: the logits' bias.
BIAS_DIM = N_EMBD - 1

WORDS = """
the of and to in is that it for was on are as with his they at be this from have or by
one had not but what all were when we there can an your which their said if do will
each about how up out them then she many some so these would other into has more her
two like him see time could no make than first been its who now people my made over did
down only way find use may water long little very after words called just where most
know get through back much go good new write our me man too any day same right look
think also around another came come work three word must because does part even place
well such here take why things help put years different away again off went old number
great tell men say small every found still between name should home big give air line
set own under read last never us left end along while might next sound below saw
something thought both few those always looked show large often together asked house
world going want school important until form food keep children feet land side without
boy once animals life enough took sometimes four head above kind began almost live page
got earth need far hand high year mother light parts country father let night following
picture being study second eyes soon times story boys since white days ever paper hard
near sentence better best across during today others however sure means knew try told
young miles sun ways thing whole hear example heard several change answer room sea
against top turned learn point city play toward five using himself usually
""".split()


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    """Pieces, scores and token types of a SentencePiece-style vocabulary."""
    tokens = ["<unk>", "<s>", "</s>"]
    types = [
        gguf.TokenType.UNKNOWN,
        gguf.TokenType.CONTROL,
        gguf.TokenType.CONTROL,
    ]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256

    # Single characters first, so every ASCII text has a tokenization without bytes,
    # then "▁"-prefixed word prefixes (every prefix, so SentencePiece's pairwise merges
    # can build the whole word) until the vocabulary is full.
    chars = string.ascii_letters + string.digits + string.punctuation
    pieces = ["▁"] + [c for c in chars if c != "<"]
    seen = set(pieces)
    for word in WORDS:
        for k in range(1, len(word) + 1):
            piece = "▁" + word[:k]
            if piece not in seen and len(tokens) + len(pieces) < N_VOCAB:
                seen.add(piece)
                pieces.append(piece)
    assert len(tokens) + len(pieces) == N_VOCAB, len(tokens) + len(pieces)
    assert not any("<" in p for p in pieces)
    tokens += pieces
    types += [gguf.TokenType.NORMAL] * len(pieces)
    # Longer pieces score higher, so merges prefer whole words.
    scores = [0.0] * (N_VOCAB - len(pieces)) + [-100.0 + len(p) for p in pieces]
    return tokens, scores, [int(t) for t in types]


# Role-prefixed lines; the generation prompt ends with "assistant:".
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def weights(rng: np.random.Generator, suppressed: list[int]) -> dict[str, np.ndarray]:
    """Random llama weights in numpy layout (rows = output features)."""

    def normal(*shape: int, std: float) -> np.ndarray:
        return rng.normal(0.0, std, size=shape).astype(np.float32)

    head_dim = N_EMBD // N_HEAD
    n_embd_kv = head_dim * N_HEAD_KV
    ones = np.ones(N_EMBD, dtype=np.float32)

    embd = normal(N_VOCAB, N_EMBD, std=1.0)
    embd[:, BIAS_DIM] = 4.0
    out = normal(N_VOCAB, N_EMBD, std=1.0)
    out[:, BIAS_DIM] = 0.0
    out[suppressed, BIAS_DIM] = -50.0

    t = {
        "token_embd.weight": embd,
        "output_norm.weight": ones.copy(),
        "output.weight": out,
    }
    for i in range(N_LAYER):
        attn_out = normal(N_EMBD, N_EMBD, std=0.1)
        ffn_down = normal(N_EMBD, N_FF, std=0.1)
        # Nothing writes to the bias dimension, so it keeps the embedding's constant.
        attn_out[BIAS_DIM, :] = 0.0
        ffn_down[BIAS_DIM, :] = 0.0
        t |= {
            f"blk.{i}.attn_norm.weight": ones.copy(),
            f"blk.{i}.attn_q.weight": normal(N_EMBD, N_EMBD, std=0.3),
            f"blk.{i}.attn_k.weight": normal(n_embd_kv, N_EMBD, std=0.3),
            f"blk.{i}.attn_v.weight": normal(n_embd_kv, N_EMBD, std=0.3),
            f"blk.{i}.attn_output.weight": attn_out,
            f"blk.{i}.ffn_norm.weight": ones.copy(),
            f"blk.{i}.ffn_gate.weight": normal(N_FF, N_EMBD, std=0.3),
            f"blk.{i}.ffn_up.weight": normal(N_FF, N_EMBD, std=0.3),
            f"blk.{i}.ffn_down.weight": ffn_down,
        }
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    tokens, scores, types = vocabulary()
    suppressed = [i for i, ty in enumerate(types) if ty != int(gguf.TokenType.NORMAL)]
    tensors = weights(np.random.default_rng(args.seed), suppressed)

    w = gguf.GGUFWriter(args.out, "llama")
    w.add_name("aigate-tiny")
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(N_VOCAB)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(UNK)
    w.add_bos_token_id(BOS)
    w.add_eos_token_id(EOS)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    for name, data in tensors.items():
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
