#!/usr/bin/env python3
"""Check a `secateur export` with the Python ecosystem.

    pip install torch transformers safetensors numpy
    secateur export RUN --format hf --out pruned-hf
    python3 scripts/check_hf_export.py pruned-hf [--sparse pruned-sparse] [--prompt "..."]

1. Loads the HF export with `transformers.AutoModelForCausalLM.from_pretrained` and
   `AutoTokenizer`, prints the sparsity of every q/k/v/o/gate/up/down projection (the
   pruned weights are exact zeros) and greedily continues a prompt.
2. With `--sparse DIR`, decodes the compressed sparse export by its documented layout
   (model/src/load/sparse.rs: `<name>.shape` I64 [2], `<name>.bitmask` U8
   [rows, ceil(cols/8)] packed little-endian bit order, `<name>.values` non-zeros in
   row-major order; metadata format/version) with numpy only, and asserts that every
   tensor equals the HF export's (both exports must use the same --dtype, f32 or f16:
   numpy has no bfloat16).
3. With `--ppl-text FILE`, computes the perplexity of FILE with transformers by
   secateur's protocol (whole file tokenised once without special tokens, non-overlapping
   windows of `--window` tokens, the first token of each window context only), to be
   compared with `secateur eval DIR --ppl FILE --window N` on the same export.

Exits non-zero on any mismatch.
"""

import argparse
import sys

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def decode_sparse(path):
    """Dense numpy arrays from a `model.sparse.safetensors` file."""
    import numpy as np
    from safetensors import safe_open

    out = {}
    with safe_open(path, framework="numpy") as f:
        meta = f.metadata() or {}
        if meta.get("format") != "secateur-sparse-bitmask" or meta.get("version") != "1":
            sys.exit(f"{path}: unexpected metadata {meta}")
        names = set(f.keys())
        for name in sorted(names):
            if name.endswith((".bitmask", ".values")):
                continue
            if name.endswith(".shape"):
                base = name[: -len(".shape")]
                rows, cols = (int(d) for d in f.get_tensor(name))
                bits = f.get_tensor(base + ".bitmask")
                values = f.get_tensor(base + ".values")
                mask = np.unpackbits(bits, axis=1, bitorder="little")[:, :cols].astype(bool)
                if mask.sum() != values.size:
                    sys.exit(f"{base}: {mask.sum()} bits set, {values.size} values")
                dense = np.zeros((rows, cols), dtype=values.dtype)
                dense[mask] = values  # boolean indexing is row-major, as the layout says
                out[base] = dense
            else:
                out[name] = f.get_tensor(name)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("hf_dir")
    ap.add_argument("--sparse", help="a sparse export of the same run to compare")
    ap.add_argument("--prompt", default="The capital of France is")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--ppl-text", help="a plain text file to score (secateur's protocol)")
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument(
        "--sparse-only",
        action="store_true",
        help="skip the transformers load (needs only numpy and safetensors)",
    )
    args = ap.parse_args()
    if not args.sparse_only:
        check_transformers(args)
    if args.sparse:
        check_sparse(args)


def check_transformers(args):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(args.hf_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(args.hf_dir)
    total = zeros = 0
    for name, p in model.named_parameters():
        if name.endswith(".weight") and any(k in name for k in PROJ):
            total += p.numel()
            zeros += int((p == 0).sum())
    print(f"loaded {type(model).__name__}: {total} prunable weights, sparsity {zeros / max(total, 1):.4f}")

    ids = tok(args.prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=args.new_tokens, do_sample=False)
    print("greedy:", repr(tok.decode(out[0][ids.shape[1]:], skip_special_tokens=True)))
    if args.ppl_text:
        perplexity(model, tok, args.ppl_text, args.window)


def perplexity(model, tok, path, window):
    """exp(mean NLL) over non-overlapping windows, as `model/src/perplexity.rs` scores."""
    import math

    import torch

    with open(path, encoding="utf-8") as f:
        ids = tok(f.read(), add_special_tokens=False).input_ids
    nll, scored = 0.0, 0
    for start in range(0, len(ids), window):
        chunk = ids[start : start + window]
        if len(chunk) < 2:
            continue
        x = torch.tensor([chunk])
        with torch.no_grad():
            logits = model(x).logits[0, :-1].double()
        nll += float(torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum"))
        scored += len(chunk) - 1
    print(f"perplexity {math.exp(nll / scored):.4f} over {scored} scored tokens (window {window})")


def check_sparse(args):
    import glob
    import os

    import numpy as np
    from safetensors.numpy import load_file

    hf = {}
    for shard in sorted(glob.glob(os.path.join(args.hf_dir, "*.safetensors"))):
        hf.update(load_file(shard))
    sp = decode_sparse(os.path.join(args.sparse, "model.sparse.safetensors"))
    if set(hf) != set(sp):
        sys.exit(f"tensor names differ: {sorted(set(hf) ^ set(sp))[:10]}")
    for name in hf:
        if not np.array_equal(hf[name].astype(np.float32), sp[name].astype(np.float32)):
            sys.exit(f"{name}: sparse export differs from the HF export")
    print(f"sparse export decodes to the HF export exactly ({len(hf)} tensors)")


if __name__ == "__main__":
    main()
