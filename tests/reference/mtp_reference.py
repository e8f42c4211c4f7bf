#!/usr/bin/env python3
"""GLM-4 MoE forward pass and MTP (nextn) layer in plain numpy, built from the model spec.

An independent reference for the engine's MTP draft layer: it reads a tiny Glm4MoeForCausalLM
checkpoint (config.json + safetensors, parsed by hand; BF16 = uint16 << 16 as float32, F16, F32)
and computes, in float64 on the stored weights:

  * the main model (shared/docs/glm4-moe.md §2): embedding, decoder layers (RMSNorm, attention
    with q/k/v bias, per-head QK-norm, partial NeoX RoPE, GQA, causal softmax; dense MLP or MoE
    with the sigmoid router, e_score_correction_bias for selection only, group-limited top-k,
    renormalised and scaled weights, unscaled shared expert), final norm, untied lm_head;
  * the MTP layer model.layers.{num_hidden_layers} (§4.1): for pair j of a sequence t_0..t_{T-1},
    z = eh_proj([enorm(embed[t_{j+1}]), hnorm(h_j)]) (embedding FIRST), the full decoder layer at
    position j with causal attention over the pairs, out = shared_head.norm(z), logits = out
    lm_head^T (the main embedding and lm_head, as SGLang; the checkpoint's copies are checked to
    be equal to them);
  * a greedy draft chain of N steps after the last pair: step k feeds the argmax token of the
    previous MTP logits with the previous MTP output (after shared_head.norm), at the next
    position, over the same causal MTP sequence.

RoPE inv_freq, angles, cos and sin are computed in float32 as transformers does; everything else
is float64.

Usage:
  mtp_reference.py MODEL_DIR --tokens 5,17,3,... [--draft-steps N]
      prints JSON: tokens, logits [T][V], hidden [T][H] (final-norm, the lm_head input),
      mtp_logits [T-1][V] and mtp_hidden [T-1][H] (pairs j = 0..T-2), draft_tokens [N],
      draft_logits [N][V] and draft_hidden [N][H].
  mtp_reference.py --check MODEL_DIR
      runs the main model on ref.json["ids"] of a folder written by make_models.py and compares
      with transformers' ref_logits.f32; prints JSON (max_abs_diff, max_abs_ref, rel_diff,
      argmax_agree) and exits 1 when rel_diff > 1e-4 or an argmax differs.

Needs python3 and numpy only.
"""

import argparse
import json
import os
import struct
import sys

import numpy as np


# ---- Checkpoint ---------------------------------------------------------------------------------


def read_safetensors(path):
    """Returns {name: float32 ndarray} for every tensor of one .safetensors file."""
    with open(path, "rb") as f:
        data = f.read()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len].decode("utf-8"))
    base = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = data[base + begin : base + end]
        shape = tuple(info["shape"])
        dtype = info["dtype"]
        if dtype == "BF16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            values = bits.view(np.float32)
        elif dtype == "F16":
            values = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        elif dtype == "F32":
            values = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        else:
            raise SystemExit(f"{path}: tensor {name} has dtype {dtype}; only BF16/F16/F32 are read")
        tensors[name] = values.reshape(shape)
    return tensors


def read_checkpoint(model_dir):
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = sorted(n for n in os.listdir(model_dir) if n.endswith(".safetensors"))
    if not files:
        raise SystemExit(f"{model_dir}: no .safetensors files")
    tensors = {}
    for name in files:
        tensors.update(read_safetensors(os.path.join(model_dir, name)))
    return tensors


class Config:
    def __init__(self, model_dir):
        with open(os.path.join(model_dir, "config.json")) as f:
            c = json.load(f)
        rope = c.get("rope_parameters") or {}
        self.vocab = c["vocab_size"]
        self.hidden = c["hidden_size"]
        self.layers = c["num_hidden_layers"]
        self.heads = c["num_attention_heads"]
        self.kv_heads = c["num_key_value_heads"]
        self.head_dim = c.get("head_dim", self.hidden // self.heads)
        self.partial = rope.get("partial_rotary_factor", c.get("partial_rotary_factor", 0.5))
        self.theta = rope.get("rope_theta", c.get("rope_theta", 10000.0))
        self.eps = c["rms_norm_eps"]
        self.first_dense = c.get("first_k_dense_replace", 0)
        self.experts = c.get("n_routed_experts", 0)
        self.top_k = c.get("num_experts_per_tok", 0)
        self.n_group = max(1, c.get("n_group", 1) or 1)
        self.topk_group = max(1, c.get("topk_group", 1) or 1)
        self.scaling = c.get("routed_scaling_factor", 1.0)
        self.norm_topk = c.get("norm_topk_prob", True)
        self.qk_norm = c.get("use_qk_norm", False)
        self.shared_experts = c.get("n_shared_experts", 0) or 0
        self.nextn = c.get("num_nextn_predict_layers", 0) or 0
        self.tied = c.get("tie_word_embeddings", False)


# ---- Model --------------------------------------------------------------------------------------


class Model:
    def __init__(self, model_dir):
        self.c = Config(model_dir)
        self.w = {k: v.astype(np.float64) for k, v in read_checkpoint(model_dir).items()}
        c = self.c
        self.embed = self.w["model.embed_tokens.weight"]
        self.lm_head = self.embed if c.tied else self.w["lm_head.weight"]
        rd = int(c.head_dim * c.partial)
        self.rotary_dim = rd
        # transformers: inv_freq = 1 / theta ** (arange(0, rd, 2) / rd) in float32.
        exponent = np.arange(0, rd, 2, dtype=np.int64).astype(np.float32) / np.float32(rd)
        self.inv_freq = (np.float32(1.0) / (np.float32(c.theta) ** exponent)).astype(np.float32)

    def has(self, name):
        return name in self.w

    # -- pieces --

    def rms_norm(self, x, weight):
        var = np.mean(x * x, axis=-1, keepdims=True)
        return weight * (x / np.sqrt(var + self.c.eps))

    def rope(self, x, positions):
        """x [T, heads, hd]; NeoX rotate_half over the first rotary_dim dims."""
        rd = self.rotary_dim
        if rd == 0:
            return x
        freqs = np.outer(np.asarray(positions, dtype=np.float32), self.inv_freq).astype(np.float32)
        emb = np.concatenate([freqs, freqs], axis=-1)
        cos = np.cos(emb).astype(np.float32).astype(np.float64)[:, None, :]
        sin = np.sin(emb).astype(np.float32).astype(np.float64)[:, None, :]
        rot = x[..., :rd]
        half = rd // 2
        rotated = np.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
        return np.concatenate([rot * cos + rotated * sin, x[..., rd:]], axis=-1)

    def linear(self, x, prefix, bias=False):
        y = x @ self.w[prefix + ".weight"].T
        if bias and self.has(prefix + ".bias"):
            y = y + self.w[prefix + ".bias"]
        return y

    def attention(self, x, p, positions):
        c = self.c
        t = x.shape[0]
        hd = c.head_dim
        q = self.linear(x, p + ".self_attn.q_proj", True).reshape(t, c.heads, hd)
        k = self.linear(x, p + ".self_attn.k_proj", True).reshape(t, c.kv_heads, hd)
        v = self.linear(x, p + ".self_attn.v_proj", True).reshape(t, c.kv_heads, hd)
        if c.qk_norm:
            q = self.rms_norm(q, self.w[p + ".self_attn.q_norm.weight"])
            k = self.rms_norm(k, self.w[p + ".self_attn.k_norm.weight"])
        q = self.rope(q, positions)
        k = self.rope(k, positions)
        group = c.heads // c.kv_heads
        k = np.repeat(k, group, axis=1)  # repeat_interleave over heads
        v = np.repeat(v, group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) * hd**-0.5
        mask = np.triu(np.ones((t, t), dtype=bool), 1)
        scores = np.where(mask[None], -np.inf, scores)
        scores = scores - scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs = probs / probs.sum(axis=-1, keepdims=True)
        o = np.einsum("hqk,khd->qhd", probs, v).reshape(t, c.heads * hd)
        return self.linear(o, p + ".self_attn.o_proj")

    def mlp(self, x, p):
        g = self.linear(x, p + ".gate_proj")
        u = self.linear(x, p + ".up_proj")
        return self.linear(g / (1.0 + np.exp(-g)) * u, p + ".down_proj")

    def route(self, logits, bias):
        """One token: (expert ids, weights) per §2.7."""
        c = self.c
        s = 1.0 / (1.0 + np.exp(-logits))
        choice = s + bias if bias is not None else s.copy()
        if c.n_group > 1:
            groups = choice.reshape(c.n_group, -1)
            group_scores = np.sort(groups, axis=-1)[:, -2:].sum(axis=-1)
            keep = np.argsort(-group_scores, kind="stable")[: c.topk_group]
            masked = np.zeros_like(groups)
            masked[keep] = groups[keep]
            choice = masked.reshape(-1)
        ids = np.argsort(-choice, kind="stable")[: c.top_k]
        w = s[ids]
        if c.norm_topk:
            w = w / (w.sum() + 1e-20)
        return ids, w * c.scaling

    def moe(self, x, p):
        c = self.c
        logits = x @ self.w[p + ".mlp.gate.weight"].T
        bias_name = p + ".mlp.gate.e_score_correction_bias"
        bias = self.w[bias_name] if self.has(bias_name) else None
        out = np.zeros_like(x)
        for t in range(x.shape[0]):
            ids, weights = self.route(logits[t], bias)
            for e, w in sorted(zip(ids.tolist(), weights.tolist())):
                out[t] += w * self.mlp(x[t : t + 1], f"{p}.mlp.experts.{e}")[0]
        if c.shared_experts > 0:
            out = out + self.mlp(x, p + ".mlp.shared_experts")
        return out

    def decoder_layer(self, x, layer, positions):
        p = f"model.layers.{layer}"
        h = self.rms_norm(x, self.w[p + ".input_layernorm.weight"])
        x = x + self.attention(h, p, positions)
        h = self.rms_norm(x, self.w[p + ".post_attention_layernorm.weight"])
        moe = layer >= self.c.first_dense and self.c.experts > 0
        return x + (self.moe(h, p) if moe else self.mlp(h, p + ".mlp"))

    # -- models --

    def forward(self, tokens):
        """Main model: (final-norm hidden [T, H], logits [T, V])."""
        x = self.embed[np.asarray(tokens)]
        positions = list(range(len(tokens)))
        for layer in range(self.c.layers):
            x = self.decoder_layer(x, layer, positions)
        h = self.rms_norm(x, self.w["model.norm.weight"])
        return h, h @ self.lm_head.T

    def mtp(self, tokens, hiddens):
        """MTP layer over pairs (tokens[j], hiddens[j]) at positions 0..n-1: (out, logits)."""
        c = self.c
        if c.nextn < 1:
            raise SystemExit("the checkpoint has no MTP layer (num_nextn_predict_layers is 0)")
        p = f"model.layers.{c.layers}"
        for copy, main in ((".embed_tokens.weight", self.embed), (".shared_head.head.weight", self.lm_head)):
            if self.has(p + copy) and not np.array_equal(self.w[p + copy], main):
                raise SystemExit(f"{p}{copy} differs from the main model's tensor")
        e = self.rms_norm(self.embed[np.asarray(tokens)], self.w[p + ".enorm.weight"])
        h = self.rms_norm(np.asarray(hiddens), self.w[p + ".hnorm.weight"])
        z = np.concatenate([e, h], axis=-1) @ self.w[p + ".eh_proj.weight"].T
        z = self.decoder_layer(z, c.layers, list(range(len(tokens))))
        out = self.rms_norm(z, self.w[p + ".shared_head.norm.weight"])
        return out, out @ self.lm_head.T


# ---- Commands -----------------------------------------------------------------------------------


def rows(a):
    return [[float(v) for v in row] for row in a]


def run(model_dir, tokens, draft_steps):
    m = Model(model_dir)
    hidden, logits = m.forward(tokens)
    result = {"tokens": tokens, "logits": rows(logits), "hidden": rows(hidden)}
    if len(tokens) >= 2:
        pair_tokens = list(tokens[1:])
        pair_hidden = [row for row in hidden[:-1]]
        out, mtp_logits = m.mtp(pair_tokens, pair_hidden)
        result["mtp_logits"] = rows(mtp_logits)
        result["mtp_hidden"] = rows(out)
        draft_tokens, draft_logits, draft_hidden = [], [], []
        last_out, last_logits = out[-1], mtp_logits[-1]
        for _ in range(draft_steps):
            token = int(np.argmax(last_logits))
            pair_tokens.append(token)
            pair_hidden.append(last_out)
            out, step_logits = m.mtp(pair_tokens, pair_hidden)
            last_out, last_logits = out[-1], step_logits[-1]
            draft_tokens.append(token)
            draft_logits.append(last_logits)
            draft_hidden.append(last_out)
        result["draft_tokens"] = draft_tokens
        result["draft_logits"] = rows(draft_logits)
        result["draft_hidden"] = rows(draft_hidden)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


def check(model_dir):
    with open(os.path.join(model_dir, "ref.json")) as f:
        ref = json.load(f)
    ids = ref["ids"]
    shape = ref["logits_file_shape"]
    expected = np.fromfile(os.path.join(model_dir, "ref_logits.f32"), dtype="<f4").reshape(shape)
    _, logits = Model(model_dir).forward(ids)
    diff = float(np.max(np.abs(logits - expected)))
    mag = float(np.max(np.abs(expected)))
    agree = int(np.sum(np.argmax(logits, -1) == np.argmax(expected, -1)))
    result = {
        "model": model_dir,
        "positions": len(ids),
        "max_abs_diff": diff,
        "max_abs_ref": mag,
        "rel_diff": diff / mag,
        "argmax_agree": agree,
    }
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0 if diff / mag <= 1e-4 and agree == len(ids) else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("--tokens", help="comma-separated token ids (at least 1)")
    parser.add_argument("--draft-steps", type=int, default=0)
    parser.add_argument("--check", action="store_true",
                        help="compare the main model with ref.json / ref_logits.f32")
    args = parser.parse_args()
    if args.check:
        return check(args.model_dir)
    if not args.tokens:
        parser.error("--tokens is required (e.g. --tokens 5,17,3)")
    tokens = [int(t) for t in args.tokens.split(",") if t]
    if not tokens:
        parser.error("--tokens needs at least one id")
    run(args.model_dir, tokens, args.draft_steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
