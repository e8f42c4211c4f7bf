#!/usr/bin/env python3
"""Builds tiny random Hugging Face checkpoints plus golden logits for spark's reference tests.

Usage: python3 make_models.py OUT_DIR [VARIANT ...]

Runs on the GPU test machine (torch 2.11, transformers 5.17, safetensors, numpy; no network), on
the CPU, in well under three minutes. For every variant it

  1. builds a tiny random model (torch.manual_seed per variant), randomises the RMSNorm weights
     (1 + 0.1 N), the biases (0.02 N) and e_score_correction_bias (0.05 N, kept F32), casts to
     bf16 and save_pretrained()s it into OUT_DIR/<variant>/;
  2. checks the saved file: exact tensor names (per-expert keys), shapes and dtypes;
  3. reloads it with from_pretrained(dtype=float32, attn_implementation="eager"), so the reference
     runs in fp32 on the bf16-rounded weights, and checks every loaded tensor equals the file;
  4. writes ref.json (prompt ids, greedy continuation via the KV cache, versions, notes) and
     ref_logits.f32 (float32 little-endian [32, vocab] logits of the 32-token prompt);
  5. for GLM variants recomputes the router (spec section 2.7) in numpy from forward hooks and
     compares the selected expert ids and weights;
  6. for glm_fp8 also writes ref_fp8_{channel,block}.json and ref_logits_fp8_{channel,block}.f32:
     the same model with every decoder Linear weight quantised to FP8 e4m3 (per output channel,
     or per 128x128 block) and dequantised again; its config.json is rewritten to the
     transformers 4.x layout (top-level rope_theta and partial_rotary_factor).

Each OUT_DIR/<variant>/ then holds only config.json, generation_config.json (if written),
model.safetensors, ref*.json and ref_logits*.f32. A variant whose data cannot be trusted is
deleted; the script exits non-zero if any check failed and prints a summary at the end.
"""

import copy
import json
import os
import re
import shutil
import struct
import sys
import time
import traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

PROMPT_LEN = 32
GREEDY_PROMPT_LEN = 8
GREEDY_NEW_TOKENS = 16
VOCAB = 256
WEIGHT_STD = 0.1  # N(0, 0.1) for every matrix: gives non-uniform attention and well separated logits
NORM_STD = 0.1
BIAS_STD = 0.02
ESCORE_STD = 0.05
FP8_MAX = 448.0
FP8_BLOCK = 128
NEAR_TIE = 1e-5  # score gaps below this count as ties (fp32 rounding can flip them)
ALLOWED_FILES = ("config.json", "generation_config.json", "model.safetensors")


class VariantError(Exception):
    """The variant's data cannot be trusted; its folder is removed."""


# --------------------------------------------------------------------------------------------
# Variant definitions
# --------------------------------------------------------------------------------------------


def glm_spec(name, seed, notes, **over):
    cfg = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        n_routed_experts=8,
        n_shared_experts=1,
        num_experts_per_tok=2,
        first_k_dense_replace=1,
        n_group=1,
        topk_group=1,
        routed_scaling_factor=2.5,
        norm_topk_prob=True,
        use_qk_norm=True,
        attention_bias=True,
        rms_norm_eps=1e-5,
        hidden_act="silu",
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        num_nextn_predict_layers=0,
        pad_token_id=0,
        eos_token_id=[1, 2],
        bos_token_id=None,
        rope_theta=1e6,
        partial_rotary_factor=0.5,
    )
    cfg.update(over)
    return dict(name=name, kind="glm", seed=seed, cfg=cfg, notes=list(notes))


def variant_specs():
    specs = [
        glm_spec("glm_base", 101, ["GLM-4.5 shape: qk-norm, qkv bias, 1 dense + 2 MoE layers, "
                                   "routed_scaling 2.5, heads*head_dim != hidden"]),
        glm_spec("glm_air", 102, ["GLM-4.5-Air shape: no qk-norm, routed_scaling 1.0, theta 1e4"],
                 use_qk_norm=False, routed_scaling_factor=1.0, num_hidden_layers=2,
                 rope_theta=10000.0),
        glm_spec("glm_groups", 103, ["group-limited routing: 4 groups, topk_group 2, top-3, "
                                     "no renormalisation, 2 shared experts, no dense layer"],
                 n_group=4, topk_group=2, num_experts_per_tok=3, norm_topk_prob=False,
                 num_hidden_layers=2, first_k_dense_replace=0, n_shared_experts=2),
        glm_spec("glm_nobias", 104, ["no attention bias, 8 heads of 16, 4 kv heads (tp=4 "
                                     "divides), partial_rotary_factor 0.25 if honoured"],
                 attention_bias=False, num_attention_heads=8, head_dim=16,
                 num_key_value_heads=4, partial_rotary_factor=0.25, num_hidden_layers=2),
        glm_spec("glm_fp8", 105, ["128-multiple shapes for FP8 block quantisation; config.json in "
                                  "the transformers 4.x layout (top-level rope_theta and "
                                  "partial_rotary_factor)"],
                 hidden_size=128, num_attention_heads=4, head_dim=64, num_key_value_heads=2,
                 intermediate_size=256, moe_intermediate_size=128, n_routed_experts=4,
                 num_experts_per_tok=2, n_shared_experts=1, num_hidden_layers=2,
                 first_k_dense_replace=1),
        dict(name="qwen3moe", kind="qwen3moe", seed=106,
             notes=["Qwen3MoeForCausalLM: softmax top-2 routing, qk-norm, no shared expert"],
             cfg=dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                      moe_intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=32, num_experts=8, num_experts_per_tok=2,
                      norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
                      attention_bias=False, rms_norm_eps=1e-6, hidden_act="silu",
                      max_position_embeddings=4096, tie_word_embeddings=False, pad_token_id=0,
                      eos_token_id=[1, 2], bos_token_id=None, rope_theta=1e6)),
        dict(name="llama", kind="llama", seed=107,
             notes=["LlamaForCausalLM: dense, untied lm_head, head_dim 16"],
             cfg=dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      attention_bias=False, mlp_bias=False, rms_norm_eps=1e-5, hidden_act="silu",
                      max_position_embeddings=4096, tie_word_embeddings=False, pad_token_id=0,
                      eos_token_id=[1, 2], bos_token_id=None, rope_theta=1e6)),
    ]
    return specs


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


class Log:
    def __init__(self, name):
        self.name = name
        self.notes = []
        self.failures = []  # failed assertions that leave the data usable
        self.warnings = []

    def info(self, msg):
        print(f"[{self.name}] {msg}", flush=True)

    def note(self, msg):
        self.notes.append(msg)
        self.info(f"note: {msg}")

    def warn(self, msg):
        self.warnings.append(msg)
        print(f"[{self.name}] WARNING: {msg}", flush=True)

    def fail(self, msg):
        self.failures.append(msg)
        print(f"[{self.name}] CHECK FAILED: {msg}", flush=True)


def read_safetensors_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n).decode("utf-8"))
    header.pop("__metadata__", None)
    return header


def head_dim_of(spec):
    cfg = spec["cfg"]
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def rotary_dim_of(spec):
    if spec["kind"] == "glm":
        return int(head_dim_of(spec) * spec["cfg"]["partial_rotary_factor"])
    return head_dim_of(spec)


def expected_tensors(spec):
    """name -> shape of every tensor the hub-format checkpoint must hold."""
    c = spec["cfg"]
    kind = spec["kind"]
    h, v, nh, nkv = c["hidden_size"], c["vocab_size"], c["num_attention_heads"], c[
        "num_key_value_heads"]
    hd = head_dim_of(spec)
    out = {"model.embed_tokens.weight": [v, h], "model.norm.weight": [h], "lm_head.weight": [v, h]}
    bias = c.get("attention_bias", False)
    qk_norm = kind == "qwen3moe" or (kind == "glm" and c["use_qk_norm"])
    for layer in range(c["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        out[p + "input_layernorm.weight"] = [h]
        out[p + "post_attention_layernorm.weight"] = [h]
        out[p + "self_attn.q_proj.weight"] = [nh * hd, h]
        out[p + "self_attn.k_proj.weight"] = [nkv * hd, h]
        out[p + "self_attn.v_proj.weight"] = [nkv * hd, h]
        out[p + "self_attn.o_proj.weight"] = [h, nh * hd]
        if bias:
            out[p + "self_attn.q_proj.bias"] = [nh * hd]
            out[p + "self_attn.k_proj.bias"] = [nkv * hd]
            out[p + "self_attn.v_proj.bias"] = [nkv * hd]
        if qk_norm:
            out[p + "self_attn.q_norm.weight"] = [hd]
            out[p + "self_attn.k_norm.weight"] = [hd]
        moe = (kind == "glm" and layer >= c["first_k_dense_replace"]) or kind == "qwen3moe"
        if not moe:
            i = c["intermediate_size"]
            out[p + "mlp.gate_proj.weight"] = [i, h]
            out[p + "mlp.up_proj.weight"] = [i, h]
            out[p + "mlp.down_proj.weight"] = [h, i]
            continue
        im = c["moe_intermediate_size"]
        e = c["n_routed_experts"] if kind == "glm" else c["num_experts"]
        out[p + "mlp.gate.weight"] = [e, h]
        for x in range(e):
            out[p + f"mlp.experts.{x}.gate_proj.weight"] = [im, h]
            out[p + f"mlp.experts.{x}.up_proj.weight"] = [im, h]
            out[p + f"mlp.experts.{x}.down_proj.weight"] = [h, im]
        if kind == "glm":
            out[p + "mlp.gate.e_score_correction_bias"] = [e]
            ish = im * c["n_shared_experts"]
            out[p + "mlp.shared_experts.gate_proj.weight"] = [ish, h]
            out[p + "mlp.shared_experts.up_proj.weight"] = [ish, h]
            out[p + "mlp.shared_experts.down_proj.weight"] = [h, ish]
    return out


def is_moe_layer(spec, layer):
    c = spec["cfg"]
    if spec["kind"] == "glm":
        return layer >= c["first_k_dense_replace"]
    return spec["kind"] == "qwen3moe"


# --------------------------------------------------------------------------------------------
# Model construction
# --------------------------------------------------------------------------------------------


def make_config(spec, log=None):
    try:
        return make_config_once(spec)
    except Exception as exc:  # noqa: BLE001 - a strict config may reject a list of eos ids
        if not isinstance(spec["cfg"].get("eos_token_id"), list):
            raise
        if log is not None:
            log.note(f"config rejected eos_token_id {spec['cfg']['eos_token_id']} ({exc}); "
                     "using eos_token_id 2")
        spec["cfg"]["eos_token_id"] = 2
        return make_config_once(spec)


def make_config_once(spec):
    import transformers

    c = dict(spec["cfg"])
    theta = c.pop("rope_theta")
    if spec["kind"] == "glm":
        prf = c.pop("partial_rotary_factor")
        c["rope_parameters"] = {"rope_type": "default", "rope_theta": theta,
                                "partial_rotary_factor": prf}
        c["partial_rotary_factor"] = prf
        return transformers.Glm4MoeConfig(**c), transformers.Glm4MoeForCausalLM
    c["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
    if spec["kind"] == "qwen3moe":
        return transformers.Qwen3MoeConfig(**c), transformers.Qwen3MoeForCausalLM
    return transformers.LlamaConfig(**c), transformers.LlamaForCausalLM


def experts_intermediate(model, spec):
    """(num_experts, intermediate) of the first MoE layer's routed experts as built."""
    c = spec["cfg"]
    for layer in range(c["num_hidden_layers"]):
        if not is_moe_layer(spec, layer):
            continue
        experts = model.model.layers[layer].mlp.experts
        h = c["hidden_size"]
        gu = getattr(experts, "gate_up_proj", None)
        if gu is not None and gu.dim() == 3:
            if gu.shape[2] == h:
                return gu.shape[0], gu.shape[1] // 2
            return gu.shape[0], gu.shape[2] // 2
        return len(experts), experts[0].gate_proj.weight.shape[0]
    return None


def rotary_modules(model):
    return [(n, m) for n, m in model.named_modules()
            if n.endswith("rotary_emb") and hasattr(m, "inv_freq")]


def build_model(spec, log):
    import torch

    for attempt in range(3):
        cfg, cls = make_config(spec, log)
        torch.manual_seed(spec["seed"])
        model = cls(cfg)
        model.eval()
        changed = False
        if spec["kind"] in ("glm", "qwen3moe"):
            e_exp = spec["cfg"]["n_routed_experts" if spec["kind"] == "glm" else "num_experts"]
            e, im = experts_intermediate(model, spec)
            if e != e_exp:
                raise VariantError(f"built {e} experts, expected {e_exp}")
            if im != spec["cfg"]["moe_intermediate_size"]:
                log.note(f"transformers sizes routed experts with intermediate_size ({im}); set "
                         f"intermediate_size = moe_intermediate_size = "
                         f"{spec['cfg']['moe_intermediate_size']}")
                spec["cfg"]["intermediate_size"] = spec["cfg"]["moe_intermediate_size"]
                changed = True
        if spec["kind"] == "glm":
            want = rotary_dim_of(spec) // 2
            got = [m.inv_freq.numel() for _, m in rotary_modules(model)]
            if not got:
                raise VariantError("no rotary_emb module with inv_freq found")
            if any(g != want for g in got):
                prf = spec["cfg"]["partial_rotary_factor"]
                if prf != 0.5:
                    log.note(f"transformers ignores partial_rotary_factor {prf} "
                             f"(len(inv_freq) {got}, wanted {want}); using 0.5")
                    spec["cfg"]["partial_rotary_factor"] = 0.5
                    changed = True
                else:
                    raise VariantError(f"len(inv_freq) = {got}, expected {want}")
        if not changed:
            return model
    raise VariantError("model construction did not converge")


def randomise(model, spec, log):
    import torch

    torch.manual_seed(spec["seed"] + 7)
    escore = {}
    counts = {"norm": 0, "bias": 0, "matrix": 0, "escore": 0}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + NORM_STD * torch.randn_like(p))
                counts["norm"] += 1
            elif name.endswith(".bias"):
                p.copy_(BIAS_STD * torch.randn_like(p))
                counts["bias"] += 1
            elif p.dim() >= 2:
                p.copy_(WEIGHT_STD * torch.randn_like(p))
                counts["matrix"] += 1
            else:
                raise VariantError(f"unexpected 1-D parameter {name}")
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(ESCORE_STD * torch.randn_like(b, dtype=torch.float32).to(b.dtype))
                escore[name] = b.detach().to(torch.float32).clone()
                counts["escore"] += 1
    log.info(f"randomised {counts}")
    if spec["kind"] == "glm":
        n_moe = sum(1 for layer in range(spec["cfg"]["num_hidden_layers"])
                    if is_moe_layer(spec, layer))
        if counts["escore"] != n_moe:
            raise VariantError(f"found {counts['escore']} e_score_correction_bias buffers, "
                               f"expected {n_moe}")
    if model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr():
        raise VariantError("lm_head is tied to embed_tokens; expected untied")
    return escore


def cast_bf16_keep_escore_f32(model, escore):
    import torch

    model.to(torch.bfloat16)
    for name, value in escore.items():
        mod_name, attr = name.rsplit(".", 1)
        mod = model.get_submodule(mod_name)
        setattr(mod, attr, value.to(torch.float32))


# --------------------------------------------------------------------------------------------
# Checkpoint checks
# --------------------------------------------------------------------------------------------

FUSED_RE = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(gate_up_proj|down_proj)$")
EXPERT_RE = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate|up|down)_proj\.weight$")


def split_fused_checkpoint(path, spec, log):
    """Rewrites a checkpoint that was saved with fused expert tensors into per-expert keys."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    h = spec["cfg"]["hidden_size"]
    out = {}
    for name, t in tensors.items():
        m = FUSED_RE.match(name)
        if not m:
            out[name] = t
            continue
        prefix, which = m.groups()
        for e in range(t.shape[0]):
            te = t[e]
            if which == "gate_up_proj":
                if te.shape[1] != h:  # stored [H, 2I]
                    te = te.t()
                im = te.shape[0] // 2
                out[f"{prefix}.{e}.gate_proj.weight"] = te[:im].contiguous()
                out[f"{prefix}.{e}.up_proj.weight"] = te[im:].contiguous()
            else:
                if te.shape[0] != h:  # stored [I, H]
                    te = te.t()
                out[f"{prefix}.{e}.down_proj.weight"] = te.contiguous()
    save_file(out, path, metadata={"format": "pt"})
    log.note("save_pretrained wrote fused expert tensors; the script split them into "
             "per-expert keys (hub layout)")


def check_checkpoint(vdir, spec, log):
    path = os.path.join(vdir, "model.safetensors")
    if not os.path.exists(path):
        raise VariantError(f"no model.safetensors in {vdir}: {sorted(os.listdir(vdir))}")
    header = read_safetensors_header(path)
    if any(FUSED_RE.match(k) for k in header):
        split_fused_checkpoint(path, spec, log)
        header = read_safetensors_header(path)
    expected = expected_tensors(spec)
    missing = sorted(set(expected) - set(header))
    extra = sorted(set(header) - set(expected))
    if missing:
        raise VariantError(f"checkpoint lacks {len(missing)} tensors, e.g. {missing[:8]}; "
                           f"it has e.g. {sorted(header)[:12]}")
    if extra:
        log.warn(f"checkpoint has {len(extra)} unexpected tensors: {extra[:8]}")
    bad_shape = [(k, header[k]["shape"], s) for k, s in expected.items()
                 if list(header[k]["shape"]) != list(s)]
    if bad_shape:
        raise VariantError(f"shape mismatch (name, saved, expected): {bad_shape[:8]}")
    dtypes = {}
    for k in expected:
        dt = header[k]["dtype"]
        if k.endswith("e_score_correction_bias"):
            dtypes.setdefault("e_score_correction_bias", set()).add(dt)
        elif dt != "BF16":
            raise VariantError(f"{k} saved as {dt}, expected BF16")
    esc = dtypes.get("e_score_correction_bias")
    if esc:
        if esc != {"F32"}:
            log.note(f"e_score_correction_bias saved as {sorted(esc)} (real checkpoints: F32)")
        else:
            log.info("e_score_correction_bias saved as F32")
    n_expert_keys = sum(1 for k in header if EXPERT_RE.match(k))
    log.info(f"checkpoint: {len(header)} tensors ({n_expert_keys} per-expert), names, shapes "
             f"and dtypes as expected")


def model_tensor_for_key(sd, key, h):
    """The loaded model's tensor that holds checkpoint tensor `key` (per-expert or fused)."""
    if key in sd:
        return sd[key]
    m = EXPERT_RE.match(key)
    if not m:
        return None
    prefix, e, which = m.group(1), int(m.group(2)), m.group(3)
    if which in ("gate", "up"):
        gu = sd.get(prefix + ".gate_up_proj")
        if gu is None:
            return None
        te = gu[e]
        if te.shape[1] != h:
            te = te.t()
        im = te.shape[0] // 2
        return te[:im] if which == "gate" else te[im:]
    d = sd.get(prefix + ".down_proj")
    if d is None:
        return None
    te = d[e]
    if te.shape[0] != h:
        te = te.t()
    return te


def verify_loaded(model, vdir, spec, log):
    """Every checkpoint tensor must be in the model bit for bit, and every model tensor covered."""
    import torch
    from safetensors.torch import load_file

    ckpt = load_file(os.path.join(vdir, "model.safetensors"))
    sd = model.state_dict()
    h = spec["cfg"]["hidden_size"]
    unmapped, differ = [], []
    for key, t in ckpt.items():
        mt = model_tensor_for_key(sd, key, h)
        if mt is None:
            unmapped.append(key)
            continue
        if tuple(mt.shape) != tuple(t.shape) or not torch.equal(mt.float(), t.float()):
            differ.append(key)
    covered = set(ckpt)
    uncovered = []
    for key in sd:
        if key in covered:
            continue
        m = FUSED_RE.match(key)
        if m and any(k.startswith(m.group(1) + ".") for k in covered):
            continue
        uncovered.append(key)
    if unmapped or differ or uncovered:
        raise VariantError(f"reloaded model does not match the checkpoint: unmapped {unmapped[:6]}, "
                           f"different {differ[:6]}, not in checkpoint {uncovered[:6]}")
    for name, p in model.named_parameters():
        if p.dtype != torch.float32:
            raise VariantError(f"{name} is {p.dtype} after reload, expected float32")
    log.info(f"reloaded model equals the checkpoint ({len(ckpt)} tensors), all fp32")


def load_reference_model(vdir, spec, log):
    import torch
    import transformers

    cls = {"glm": transformers.Glm4MoeForCausalLM, "qwen3moe": transformers.Qwen3MoeForCausalLM,
           "llama": transformers.LlamaForCausalLM}[spec["kind"]]
    model = cls.from_pretrained(vdir, dtype=torch.float32, attn_implementation="eager",
                                local_files_only=True)
    model = model.float().eval()  # exact for bf16-valued tensors; guards against a dtype default
    impl = getattr(model.config, "_attn_implementation", None)
    if impl != "eager":
        raise VariantError(f"attention implementation is {impl!r}, expected 'eager'")
    if spec["kind"] != "llama":
        set_fn = getattr(model, "set_experts_implementation", None)
        try:
            if set_fn is not None:
                set_fn("eager")
            elif hasattr(model.config, "_experts_implementation"):
                model.config._experts_implementation = "eager"
        except Exception as exc:  # noqa: BLE001 - older/newer API shapes
            log.warn(f"could not select eager experts implementation: {exc}")
        ei = getattr(model.config, "_experts_implementation", "n/a")
        if ei not in ("eager", "n/a", None):
            log.warn(f"experts implementation is {ei!r}")
    return model


def check_model_shape(model, spec, log):
    c = spec["cfg"]
    hd = head_dim_of(spec)
    if getattr(model.config, "head_dim", None) != hd:
        raise VariantError(f"config.head_dim = {getattr(model.config, 'head_dim', None)}, "
                           f"expected {hd}")
    q = model.model.layers[0].self_attn.q_proj.weight
    if q.shape[0] != c["num_attention_heads"] * hd:
        raise VariantError(f"q_proj rows {q.shape[0]} != heads*head_dim")
    want = rotary_dim_of(spec) // 2
    got = [m.inv_freq.numel() for _, m in rotary_modules(model)]
    if not got or any(g != want for g in got):
        raise VariantError(f"len(inv_freq) = {got}, expected {want} (rotary dim "
                           f"{rotary_dim_of(spec)})")


# --------------------------------------------------------------------------------------------
# Router check (spec section 2.7 for GLM, softmax top-k for Qwen3-MoE)
# --------------------------------------------------------------------------------------------


def route_reference(spec, x, w_gate, escore):
    """Expected (ids [T,k], weights [T,k], selection margin [T]) in float64."""
    c = spec["cfg"]
    logits = x.astype(np.float64) @ w_gate.astype(np.float64).T
    t = logits.shape[0]
    k = c["num_experts_per_tok"]
    if spec["kind"] == "qwen3moe":
        z = logits - logits.max(axis=-1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=-1, keepdims=True)
        order = np.argsort(-p, axis=-1, kind="stable")
        ids = order[:, :k]
        w = np.take_along_axis(p, ids, axis=-1)
        if c["norm_topk_prob"]:
            w = w / w.sum(axis=-1, keepdims=True)
        srt = np.take_along_axis(p, order, axis=-1)
        margin = srt[:, k - 1] - srt[:, k]
        return ids, w, margin
    e = c["n_routed_experts"]
    ng, tg = c["n_group"], c["topk_group"]
    s = 1.0 / (1.0 + np.exp(-logits))
    sc = s + escore.astype(np.float64)[None, :]
    grouped = sc.reshape(t, ng, e // ng)
    gs = np.sort(grouped, axis=-1)[..., -2:].sum(axis=-1)
    gorder = np.argsort(-gs, axis=-1, kind="stable")
    keep = np.zeros((t, ng), dtype=bool)
    np.put_along_axis(keep, gorder[:, :tg], True, axis=-1)
    margin = np.full(t, np.inf)
    if tg < ng:
        gsrt = np.take_along_axis(gs, gorder, axis=-1)
        margin = gsrt[:, tg - 1] - gsrt[:, tg]
    masked = np.where(np.repeat(keep, e // ng, axis=1), sc, 0.0)
    order = np.argsort(-masked, axis=-1, kind="stable")
    ids = order[:, :k]
    w = np.take_along_axis(s, ids, axis=-1)
    if c["norm_topk_prob"]:
        w = w / (w.sum(axis=-1, keepdims=True) + 1e-20)
    w = w * c["routed_scaling_factor"]
    srt = np.take_along_axis(masked, order, axis=-1)
    margin = np.minimum(margin, srt[:, k - 1] - srt[:, k])
    return ids, w, margin


class RouterProbe:
    """Forward hooks on every MoE layer's router (input) and experts (chosen ids and weights)."""

    def __init__(self, model, spec):
        self.spec = spec
        self.records = {}
        self.handles = []
        for layer in range(spec["cfg"]["num_hidden_layers"]):
            if not is_moe_layer(spec, layer):
                continue
            mlp = model.model.layers[layer].mlp
            rec = {"gate": mlp.gate, "x": None, "ids": None, "w": None}
            self.records[layer] = rec
            self.handles.append(mlp.gate.register_forward_hook(self._gate_hook(rec)))
            experts = mlp.experts
            self.handles.append(
                experts.register_forward_pre_hook(self._experts_hook(rec), with_kwargs=True))

    @staticmethod
    def _gate_hook(rec):
        def hook(module, args, output):
            rec["x"] = args[0].detach().reshape(-1, args[0].shape[-1]).float().cpu().numpy()
            if isinstance(output, (tuple, list)):
                ints = [o for o in output if hasattr(o, "dtype") and not o.is_floating_point()]
                if ints and rec["ids"] is None:
                    rec["ids_from_gate"] = ints[0].detach().cpu().numpy()
        return hook

    @staticmethod
    def _experts_hook(rec):
        def hook(module, args, kwargs):
            vals = list(args[1:3])
            for key in ("top_k_index", "topk_indices", "router_indices", "selected_experts"):
                if key in kwargs:
                    vals = [kwargs[key]] + vals[1:]
            for key in ("top_k_weights", "topk_weights", "routing_weights", "router_scores"):
                if key in kwargs:
                    vals = vals[:1] + [kwargs[key]]
            if len(vals) >= 1 and hasattr(vals[0], "dtype") and not vals[0].is_floating_point():
                rec["ids"] = vals[0].detach().cpu().numpy()
                if len(vals) >= 2 and hasattr(vals[1], "dtype"):
                    rec["w"] = vals[1].detach().float().cpu().numpy()
            return None
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()
        self.handles = []

    def check(self, log, strict):
        """Compares the captured routing with the numpy recomputation; returns per-layer ids."""
        summary = {}
        report = log.fail if strict else log.warn
        for layer, rec in self.records.items():
            if rec["x"] is None:
                report(f"layer {layer}: router hook saw no input")
                continue
            gate = rec["gate"]
            w_gate = gate.weight.detach().float().cpu().numpy()
            esc = getattr(gate, "e_score_correction_bias", None)
            esc = esc.detach().float().cpu().numpy() if esc is not None else None
            ids_ref, w_ref, margin = route_reference(self.spec, rec["x"], w_gate, esc)
            ids = rec["ids"] if rec["ids"] is not None else rec.get("ids_from_gate")
            summary[layer] = np.sort(ids_ref, axis=-1).tolist()
            ties = np.nonzero(margin < NEAR_TIE)[0]
            if len(ties):
                log.warn(f"layer {layer}: near-tie expert selection at tokens {ties.tolist()} "
                         f"(margin {margin[ties].min():.2e})")
            if ids is None:
                report(f"layer {layer}: could not capture transformers' chosen expert ids")
                continue
            ids = ids.reshape(ids_ref.shape[0], -1)
            if ids.shape != ids_ref.shape:
                report(f"layer {layer}: captured ids shape {ids.shape}, expected {ids_ref.shape}")
                continue
            a, b = np.sort(ids, axis=-1), np.sort(ids_ref, axis=-1)
            bad = [t for t in range(a.shape[0]) if not np.array_equal(a[t], b[t])]
            hard = [t for t in bad if margin[t] >= NEAR_TIE]
            if hard:
                log.fail(f"layer {layer}: expert ids differ from the section 2.7 recomputation at "
                         f"tokens {hard} (transformers {a[hard[0]].tolist()}, numpy "
                         f"{b[hard[0]].tolist()}, margin {margin[hard[0]]:.3e})")
            elif bad:
                log.warn(f"layer {layer}: ids differ only at near-tie tokens {bad}")
            w = rec["w"]
            if w is not None and not bad:
                w = w.reshape(ids.shape[0], -1)
                if w.shape[1] != ids.shape[1]:  # dense [T, E] scores
                    w = np.take_along_axis(w, ids, axis=-1)
                wa = np.take_along_axis(w, np.argsort(ids, axis=-1), axis=-1)
                wb = np.take_along_axis(w_ref, np.argsort(ids_ref, axis=-1), axis=-1)
                err = np.max(np.abs(wa - wb) / np.maximum(1.0, np.abs(wb)))
                if err > 1e-5:
                    log.fail(f"layer {layer}: routing weights differ from the recomputation by "
                             f"{err:.3e}")
                else:
                    log.info(f"layer {layer}: router ids equal the recomputation, weights within "
                             f"{err:.1e}, min selection margin {margin.min():.3e}")
            elif not bad:
                log.info(f"layer {layer}: router ids equal the recomputation (weights not "
                         f"captured), min selection margin {margin.min():.3e}")
        return summary


# --------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------


def prompt_ids(spec):
    import torch

    g = torch.Generator().manual_seed(spec["seed"] * 1000 + 17)
    return torch.randint(3, spec["cfg"]["vocab_size"], (1, PROMPT_LEN), generator=g)


def forward_logits(model, ids):
    import torch

    with torch.no_grad():
        out = model(input_ids=ids, use_cache=False)
    return out.logits[0].float()


def top2_margin(row):
    import torch

    v = torch.topk(row, 2).values
    return float(v[0] - v[1])


def greedy_kv(model, prompt):
    """Greedy decoding through the KV cache (prefill, then one token per step); no EOS stop."""
    import torch

    toks, margins = [], []
    with torch.no_grad():
        out = model(input_ids=prompt, use_cache=True)
        for step in range(GREEDY_NEW_TOKENS):
            row = out.logits[0, -1].float()
            nxt = int(torch.argmax(row))
            toks.append(nxt)
            margins.append(top2_margin(row))
            if step + 1 == GREEDY_NEW_TOKENS:
                break
            out = model(input_ids=torch.tensor([[nxt]], dtype=prompt.dtype),
                        past_key_values=out.past_key_values, use_cache=True)
    return toks, margins


def greedy_generate(model, prompt, log):
    """model.generate(do_sample=False) with EOS stopping disabled; None if generate fails."""
    import torch

    try:
        gc = copy.deepcopy(model.generation_config)
        gc.do_sample = False
        gc.num_beams = 1
        gc.max_new_tokens = GREEDY_NEW_TOKENS
        gc.eos_token_id = None
        gc.pad_token_id = 0
        for attr in ("temperature", "top_p", "top_k"):
            if hasattr(gc, attr):
                setattr(gc, attr, None)
        saved = model.generation_config
        model.generation_config = gc
        try:
            with torch.no_grad():
                out = model.generate(prompt, attention_mask=torch.ones_like(prompt),
                                     generation_config=gc, use_cache=True)
        finally:
            model.generation_config = saved
        return out[0, prompt.shape[1]:].tolist()
    except Exception as exc:  # noqa: BLE001 - generate() is only a cross-check
        log.warn(f"generate() failed: {type(exc).__name__}: {exc}")
        return None


def reference_run(model, spec, log, label, probe_strict):
    """Logits of the prompt, router check, greedy continuation. Returns (json dict, logits)."""
    import torch

    ids = prompt_ids(spec)
    probe = RouterProbe(model, spec) if spec["kind"] in ("glm", "qwen3moe") else None
    try:
        logits = forward_logits(model, ids)
    finally:
        if probe is not None:
            probe.remove()
    router = probe.check(log, strict=probe_strict) if probe is not None else {}
    if logits.shape != (PROMPT_LEN, spec["cfg"]["vocab_size"]):
        raise VariantError(f"logits shape {tuple(logits.shape)}")
    if not torch.isfinite(logits).all():
        raise VariantError("non-finite logits")
    margins = [top2_margin(logits[t]) for t in range(PROMPT_LEN)]
    close = [t for t, m in enumerate(margins) if m < 1e-4]
    if close:
        log.warn(f"{label}: prompt positions {close} have top-2 logit gaps < 1e-4")

    prompt = ids[:, :GREEDY_PROMPT_LEN]
    greedy, gmargins = greedy_kv(model, prompt)
    full = torch.cat([prompt, torch.tensor([greedy], dtype=ids.dtype)], dim=1)
    no_cache = forward_logits(model, full)
    recomputed = [int(torch.argmax(no_cache[GREEDY_PROMPT_LEN - 1 + i]))
                  for i in range(GREEDY_NEW_TOKENS)]
    if recomputed != greedy:
        first = next(i for i in range(GREEDY_NEW_TOKENS) if recomputed[i] != greedy[i])
        msg = (f"{label}: KV-cache greedy {greedy} differs from the no-cache argmax {recomputed} "
               f"at step {first} (margin {gmargins[first]:.2e})")
        (log.warn if gmargins[first] < NEAR_TIE else log.fail)(msg)
    gen = greedy_generate(model, prompt, log)
    if gen is not None:
        n = min(len(gen), len(greedy))
        if gen[:n] != greedy[:n] or len(gen) != len(greedy):
            log.warn(f"{label}: generate() gave {gen}, the KV-cache loop {greedy}")
    small = [i for i, m in enumerate(gmargins) if m < 1e-4]
    if small:
        log.warn(f"{label}: greedy steps {small} have top-2 logit gaps < 1e-4")
    max_abs = float(logits.abs().max())
    log.info(f"{label}: max|logit| {max_abs:.4f}, min prompt top-2 gap {min(margins):.2e}, "
             f"greedy {greedy}")
    ref = {
        "ids": ids[0].tolist(),
        "greedy_prompt": prompt[0].tolist(),
        "greedy": greedy,
        "greedy_generate": gen,
        "greedy_top2_gaps": [round(m, 6) for m in gmargins],
        "prompt_argmax": [int(torch.argmax(logits[t])) for t in range(PROMPT_LEN)],
        "prompt_top2_gaps": [round(m, 6) for m in margins],
        "max_abs_logit": max_abs,
        "logits_file_shape": [PROMPT_LEN, spec["cfg"]["vocab_size"]],
        "router_topk_ids": {str(k): v for k, v in router.items()},
    }
    return ref, logits


def versions():
    import torch
    import transformers

    return {"transformers": transformers.__version__, "torch": torch.__version__}


def write_reference(vdir, suffix, ref, logits, spec, log, extra_notes=()):
    ref = dict(ref)
    ref.update(versions())
    ref["variant"] = spec["name"]
    ref["notes"] = list(log.notes) + list(extra_notes)
    ref["config"] = {k: v for k, v in spec["cfg"].items()}
    with open(os.path.join(vdir, f"ref{suffix}.json"), "w") as f:
        json.dump(ref, f, indent=1, sort_keys=True)
        f.write("\n")
    arr = logits.detach().cpu().numpy().astype("<f4")
    arr.tofile(os.path.join(vdir, f"ref_logits{suffix}.f32"))


# --------------------------------------------------------------------------------------------
# FP8
# --------------------------------------------------------------------------------------------

ATTN_W_RE = re.compile(r"^model\.layers\.\d+\.self_attn\.(q|k|v|o)_proj\.weight$")
MLP_W_RE = re.compile(r"^model\.layers\.\d+\.mlp\.(shared_experts\.)?(gate|up|down)_proj\.weight$")


def fp8_quant_dequant(w, scheme):
    """FP8 e4m3 round trip of one [N, K] fp32 weight; scale = amax / 448 (1.0 where amax == 0)."""
    import torch

    w = w.to(torch.float32)
    if scheme == "channel":
        amax = w.abs().amax(dim=1, keepdim=True)
        scale = amax / FP8_MAX
        scale = torch.where(amax == 0, torch.ones_like(scale), scale)
        q = torch.clamp(w / scale, -FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        return q.to(torch.float32) * scale
    out = torch.empty_like(w)
    n, k = w.shape
    for r in range(0, n, FP8_BLOCK):
        for c in range(0, k, FP8_BLOCK):
            blk = w[r:r + FP8_BLOCK, c:c + FP8_BLOCK]
            amax = blk.abs().amax()
            scale = amax / FP8_MAX
            scale = torch.where(amax == 0, torch.ones_like(scale), scale)
            q = torch.clamp(blk / scale, -FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
            out[r:r + FP8_BLOCK, c:c + FP8_BLOCK] = q.to(torch.float32) * scale
    return out


def quantise_model(model, spec, scheme, log):
    """Quantises every decoder Linear weight in place; returns the number of [N, K] matrices."""
    import torch

    h = spec["cfg"]["hidden_size"]
    done = 0
    names = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ATTN_W_RE.match(name) or MLP_W_RE.match(name) or EXPERT_RE.match(name):
                p.copy_(fp8_quant_dequant(p.data, scheme))
                done += 1
                names.append(name)
                continue
            m = FUSED_RE.match(name)
            if not m:
                continue
            names.append(name)
            for e in range(p.shape[0]):
                te = p.data[e]
                transposed = (m.group(2) == "gate_up_proj" and te.shape[1] != h) or (
                    m.group(2) == "down_proj" and te.shape[0] != h)
                if transposed:
                    te = te.t()
                if m.group(2) == "gate_up_proj":
                    im = te.shape[0] // 2
                    q = torch.cat([fp8_quant_dequant(te[:im], scheme),
                                   fp8_quant_dequant(te[im:], scheme)], dim=0)
                    done += 2
                else:
                    q = fp8_quant_dequant(te, scheme)
                    done += 1
                p.data[e].copy_(q.t() if transposed else q)
    c = spec["cfg"]
    want = 0
    for layer in range(c["num_hidden_layers"]):
        want += 4
        want += 3 * c["n_routed_experts"] + 3 if is_moe_layer(spec, layer) else 3
    if done != want:
        raise VariantError(f"fp8-{scheme}: quantised {done} matrices, expected {want}: {names}")
    for name, p in model.named_parameters():
        if "mlp.gate.weight" in name or "embed_tokens" in name or "lm_head" in name:
            if name in names:
                raise VariantError(f"fp8-{scheme}: {name} must stay unquantised")
    log.info(f"fp8-{scheme}: quantised {done} weight matrices")
    return done


def rewrite_config_v4_layout(vdir, spec, log):
    path = os.path.join(vdir, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    rp = cfg.pop("rope_parameters", None) or {}
    cfg["rope_theta"] = rp.get("rope_theta", spec["cfg"]["rope_theta"])
    cfg["partial_rotary_factor"] = rp.get("partial_rotary_factor",
                                          spec["cfg"]["partial_rotary_factor"])
    cfg["rope_scaling"] = None
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    log.note("config.json rewritten in the transformers 4.x layout: top-level rope_theta "
             f"{cfg['rope_theta']} and partial_rotary_factor {cfg['partial_rotary_factor']}, "
             "no rope_parameters")


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def make_variant(spec, out_dir):
    log = Log(spec["name"])
    log.notes.extend(spec["notes"])
    vdir = os.path.join(out_dir, spec["name"])
    if os.path.exists(vdir):
        shutil.rmtree(vdir)
    os.makedirs(vdir)
    t0 = time.time()
    try:
        model = build_model(spec, log)
        escore = randomise(model, spec, log)
        cast_bf16_keep_escore_f32(model, escore)
        model.save_pretrained(vdir)
        del model
        for f in sorted(os.listdir(vdir)):
            if f not in ALLOWED_FILES:
                log.info(f"removing {f} from the output folder")
                p = os.path.join(vdir, f)
                shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
        check_checkpoint(vdir, spec, log)

        model = load_reference_model(vdir, spec, log)
        check_model_shape(model, spec, log)
        verify_loaded(model, vdir, spec, log)
        ref, logits = reference_run(model, spec, log, "bf16-weights fp32", probe_strict=(
            spec["kind"] == "glm"))
        log.note(f"weights N(0, {WEIGHT_STD}), norms 1 + {NORM_STD} N, biases {BIAS_STD} N, "
                 f"e_score_correction_bias {ESCORE_STD} N; reference = fp32 eager forward of the "
                 "bf16-rounded checkpoint; greedy = KV-cache argmax loop without EOS stop "
                 "(greedy_generate = model.generate output for comparison)")
        write_reference(vdir, "", ref, logits, spec, log)
        del model

        if spec["name"] == "glm_fp8":
            make_fp8_references(spec, vdir, logits, log)
    except VariantError as exc:
        log.fail(f"variant dropped: {exc}")
        shutil.rmtree(vdir, ignore_errors=True)
        return log, False
    except Exception:  # noqa: BLE001 - report every variant, keep going
        log.fail("variant dropped after an unexpected error:\n" + traceback.format_exc())
        shutil.rmtree(vdir, ignore_errors=True)
        return log, False
    log.info(f"done in {time.time() - t0:.1f} s")
    return log, True


def make_fp8_references(spec, vdir, bf16_logits, log):
    import torch

    if not hasattr(torch, "float8_e4m3fn"):
        raise VariantError("torch lacks float8_e4m3fn")
    for scheme in ("channel", "block"):
        try:
            model = load_reference_model(vdir, spec, log)
            quantise_model(model, spec, scheme, log)
            ref, logits = reference_run(model, spec, log, f"fp8-{scheme}", probe_strict=True)
            ratio = float((logits - bf16_logits).abs().max() / bf16_logits.abs().max())
            log.info(f"fp8-{scheme}: max|fp8 - bf16 logits| / max|bf16| = {ratio:.3e}")
            ref["fp8"] = {
                "scheme": scheme,
                "algorithm": "scale = amax(|w|) / 448 per output row (channel) or per 128x128 "
                             "block (block), float32, 1.0 where amax == 0; q = clamp(w / scale, "
                             "-448, 448) -> float8_e4m3fn (round to nearest even); w' = "
                             "float(q) * scale",
                "quantised": "self_attn.{q,k,v,o}_proj, dense and shared-expert and routed-"
                             "expert {gate,up,down}_proj; not lm_head, mlp.gate, embeddings, "
                             "norms, e_score_correction_bias, biases",
                "activations": "not quantised (fp32)",
                "max_rel_diff_vs_bf16_logits": ratio,
            }
            write_reference(vdir, f"_fp8_{scheme}", ref, logits, spec, log)
            del model
        except VariantError as exc:
            log.fail(f"fp8-{scheme} references dropped: {exc}")
        except Exception:  # noqa: BLE001
            log.fail(f"fp8-{scheme} references dropped:\n" + traceback.format_exc())
    rewrite_config_v4_layout(vdir, spec, log)
    # The references above came from the rope_parameters layout; check the 4.x layout reloads
    # to the same model (informational: spark's parser is what this layout exists to test).
    try:
        model = load_reference_model(vdir, spec, log)
        got = [m.inv_freq.numel() for _, m in rotary_modules(model)]
        logits = forward_logits(model, prompt_ids(spec))
        diff = float((logits - bf16_logits).abs().max())
        if diff != 0.0 or any(g != rotary_dim_of(spec) // 2 for g in got):
            log.warn(f"4.x-layout config reloads differently: max|diff| {diff:.3e}, "
                     f"len(inv_freq) {got}")
        else:
            log.info("4.x-layout config reloads to identical logits")
        del model
    except Exception as exc:  # noqa: BLE001
        log.warn(f"4.x-layout config does not reload in transformers: {exc}")
    # Re-stamp the notes (the config rewrite note came after ref.json was written).
    for name in os.listdir(vdir):
        if name.startswith("ref") and name.endswith(".json"):
            p = os.path.join(vdir, name)
            with open(p) as f:
                ref = json.load(f)
            for n in log.notes:
                if n not in ref["notes"]:
                    ref["notes"].append(n)
            with open(p, "w") as f:
                json.dump(ref, f, indent=1, sort_keys=True)
                f.write("\n")


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__)
        return 2
    out_dir = os.path.abspath(argv[1])
    wanted = argv[2:]
    specs = variant_specs()
    names = [s["name"] for s in specs]
    unknown = [w for w in wanted if w not in names]
    if unknown:
        print(f"unknown variants {unknown}; choose from {names}")
        return 2
    if wanted:
        specs = [s for s in specs if s["name"] in wanted]
    os.makedirs(out_dir, exist_ok=True)

    import torch
    import transformers

    torch.set_num_threads(min(8, os.cpu_count() or 1))
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, "
          f"numpy {np.__version__}, python {sys.version.split()[0]}; writing to {out_dir}",
          flush=True)
    t0 = time.time()
    results = []
    for spec in specs:
        log, ok = make_variant(spec, out_dir)
        results.append((spec, log, ok))

    print("\n==================== SUMMARY ====================")
    total = 0
    all_ok = True
    for spec, log, ok in results:
        vdir = os.path.join(out_dir, spec["name"])
        size = 0
        files = []
        if os.path.isdir(vdir):
            for f in sorted(os.listdir(vdir)):
                sz = os.path.getsize(os.path.join(vdir, f))
                size += sz
                files.append(f"{f}({sz})")
        total += size
        status = "OK" if ok and not log.failures else ("DATA KEPT, CHECKS FAILED" if ok else
                                                      "DROPPED")
        all_ok = all_ok and ok and not log.failures
        print(f"{spec['name']}: {status}; {size} bytes: {' '.join(files)}")
        for n in log.notes:
            print(f"    note: {n}")
        for w in log.warnings:
            print(f"    warning: {w}")
        for fl in log.failures:
            print(f"    FAILED: {fl.splitlines()[0]}")
    print(f"total {total} bytes ({total / 2**20:.2f} MiB) in {time.time() - t0:.1f} s")
    print("RESULT: " + ("ALL CHECKS PASSED" if all_ok else "SOME CHECKS FAILED (see above)"))
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
