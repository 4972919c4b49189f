#!/usr/bin/env python3
"""Compare secateur's Wanda / SparseGPT / OWL with PyTorch implementations that follow
the reference code, on the same weights, calibration tokens and perplexity tokens.

    pip install torch transformers accelerate safetensors gguf numpy
    cargo build --release
    python3 scripts/compare-pytorch.py --secateur target/release/secateur \\
        --sparsity 0.5 --methods wanda,sparsegpt,owl

Not run by CI. The PyTorch side (this file) re-implements, with the structure of the
reference code:
- Wanda: locuslab/wanda lib/prune.py `prune_wanda` (sequential: block i calibrated on
  the outputs of the pruned blocks before it; |W|·sqrt(scaler_row), stable sort per
  row, the first int(cols·s) of each row pruned).
- SparseGPT: IST-DASLab/sparsegpt sparsegpt.py `SparseGPT.add_batch`/`fasterprune`
  (H = 2XXᵀ/n as a running average, 1 % damping, block 128, unstructured mask per
  [rows × 128] tile, lazy batch updates) driven as locuslab/wanda `prune_sparsegpt`
  (all seven linears of a block calibrated in one pass of the block).
- OWL: luuyin/OWL lib/prune_all.py `prune_wanda_outlier` (outlier ratio per block =
  share of Wanda scores above M × their block mean, on a dense pass; ratios min-max
  scaled to [0, 2λ], centred; then sequential Wanda at 1 − density per block).

Data follow `secateur compare` exactly: the model is the GGUF (or HF directory) given;
calibration = the first 4·samples non-blank `FIELD` values of the JSONL file, joined
with "\\n\\n", tokenised once without special tokens, cut into the first `samples`
consecutive windows of `len` tokens; perplexity = every non-blank value of the PPL
file joined with "\\n\\n", tokenised once, the first --ppl-tokens tokens, in
non-overlapping windows of --window tokens (the first token of each window is context
only), total NLL over all scored tokens.

With --secateur BIN the script also runs `BIN compare ... --json --no-agent` with the
same settings (or reads --ours compare.json) and prints both tables side by side.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def read_texts(spec, limit=None):
    """secateur's eval::data::read_texts for `FILE.jsonl:FIELD` (or a plain text file)."""
    path, _, field = spec.rpartition(":") if ":" in spec else (spec, "", "")
    if not (path.endswith(".jsonl") or field):
        with open(path, encoding="utf-8") as f:
            return [f.read()]
    field = field or "text"
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if limit is not None and len(out) >= limit:
                break
            if not line.strip():
                continue
            value = json.loads(line)[field]
            if value.strip():
                out.append(value)
    return out


def load_model(path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if os.path.isdir(path):
        kw = {}
        folder = path
    else:
        folder, kw = os.path.dirname(os.path.abspath(path)), {"gguf_file": os.path.basename(path)}
    tok = AutoTokenizer.from_pretrained(folder, **kw)
    # sdpa: a block called without a mask is causal (eager attention would not be).
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="sdpa", **kw
    )
    model.config.use_cache = False
    model.eval()
    return model, tok


def encode(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------- sequential driver


def capture_block_inputs(model, windows):
    """The reference's Catcher: block 0's inputs and the kwargs the model passes."""
    import torch

    layers = model.model.layers
    inps, cache = [], {}

    class Catcher(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module
            self.attention_type = getattr(module, "attention_type", "full_attention")

        def forward(self, inp, *args, **kwargs):
            inps.append(inp.detach())
            cache.update(kwargs)
            raise ValueError

    layers[0] = Catcher(layers[0])
    for w in windows:
        try:
            model(torch.tensor([w]), use_cache=False)
        except ValueError:
            pass
    layers[0] = layers[0].module
    kwargs = {k: v for k, v in cache.items() if k not in ("past_key_value", "past_key_values")}
    return inps, kwargs


def run_block(layer, inps, kwargs):
    outs = []
    for x in inps:
        y = layer(x, **kwargs)
        outs.append(y[0] if isinstance(y, tuple) else y)
    return outs


def linears(layer):
    import torch

    return {n: m for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}


def collect(layer, inps, kwargs, make):
    """Run `layer` on `inps` with a hook per linear feeding `make(linear)` objects."""
    subset = linears(layer)
    stats = {n: make(m) for n, m in subset.items()}
    handles = [
        m.register_forward_hook(lambda _m, i, o, n=n: stats[n].add_batch(i[0].data))
        for n, m in subset.items()
    ]
    run_block(layer, inps, kwargs)
    for h in handles:
        h.remove()
    return subset, stats


class WandaStats:
    """locuslab/wanda lib/layerwrapper.py WrappedGPT.scaler_row."""

    def __init__(self, layer):
        import torch

        self.scaler_row = torch.zeros(layer.weight.shape[1])
        self.nsamples = 0

    def add_batch(self, inp):
        import torch

        tmp = inp.shape[0]
        inp = inp.reshape(-1, inp.shape[-1]).t().float()
        self.scaler_row *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        self.scaler_row += torch.norm(inp, p=2, dim=1) ** 2 / self.nsamples


def wanda_metric(linear, st):
    import torch

    return torch.abs(linear.weight.data) * torch.sqrt(st.scaler_row.reshape(1, -1))


def prune_wanda(model, windows, sparsity, per_block=None):
    import torch

    with torch.no_grad():
        inps, kwargs = capture_block_inputs(model, windows)
        for i, layer in enumerate(model.model.layers):
            s = per_block[i] if per_block is not None else sparsity
            subset, stats = collect(layer, inps, kwargs, WandaStats)
            for name, lin in subset.items():
                metric = wanda_metric(lin, stats[name])
                idx = torch.sort(metric, dim=-1, stable=True)[1][:, : int(metric.shape[1] * s)]
                mask = torch.zeros_like(metric, dtype=torch.bool).scatter_(1, idx, True)
                lin.weight.data[mask] = 0
            inps = run_block(layer, inps, kwargs)


def prune_owl(model, windows, sparsity, m_threshold=5.0, lam=0.08):
    import numpy as np
    import torch

    ratios = []
    with torch.no_grad():
        inps, kwargs = capture_block_inputs(model, windows)
        for layer in model.model.layers:
            subset, stats = collect(layer, inps, kwargs, WandaStats)
            metric = torch.cat([wanda_metric(l, stats[n]).flatten() for n, l in subset.items()])
            ratios.append(float((metric > metric.mean() * m_threshold).sum()) / metric.numel() * 100)
            inps = run_block(layer, inps, kwargs)
    r = np.array(ratios)
    r = (r - r.min()) * (1 / (r.max() - r.min()) * lam * 2)
    density = r - r.mean() + (1 - sparsity)
    per_block = [1 - d if 1 - d > 0 else 0.01 for d in density]
    prune_wanda(model, windows, sparsity, per_block)
    return per_block


class SparseGPT:
    """IST-DASLab/sparsegpt sparsegpt.py, unstructured path, without quantisation."""

    def __init__(self, layer):
        import torch

        self.layer = layer
        self.columns = layer.weight.shape[1]
        self.H = torch.zeros((self.columns, self.columns))
        self.nsamples = 0

    def add_batch(self, inp):
        if len(inp.shape) == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        inp = inp.reshape((-1, inp.shape[-1])).t()
        self.H *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = math.sqrt(2 / self.nsamples) * inp.float()
        self.H += inp.matmul(inp.t())

    def fasterprune(self, sparsity, blocksize=128, percdamp=0.01):
        import torch

        W = self.layer.weight.data.clone().float()
        H = self.H
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0
        damp = percdamp * torch.mean(torch.diag(H))
        diag = torch.arange(self.columns)
        H[diag, diag] += damp
        H = torch.linalg.cholesky(H)
        H = torch.cholesky_inverse(H)
        Hinv = torch.linalg.cholesky(H, upper=True)
        for i1 in range(0, self.columns, blocksize):
            i2 = min(i1 + blocksize, self.columns)
            count = i2 - i1
            W1 = W[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]
            tmp = W1**2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
            thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
            mask1 = tmp <= thresh
            for i in range(count):
                w = W1[:, i]
                d = Hinv1[i, i]
                q = w.clone()
                q[mask1[:, i]] = 0
                Q1[:, i] = q
                err1 = (w - q) / d
                W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
                Err1[:, i] = err1
            W[:, i1:i2] = Q1
            W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
        self.layer.weight.data = W.to(self.layer.weight.dtype)


def prune_sparsegpt(model, windows, sparsity):
    import torch

    with torch.no_grad():
        inps, kwargs = capture_block_inputs(model, windows)
        for layer in model.model.layers:
            _, gpts = collect(layer, inps, kwargs, SparseGPT)
            for g in gpts.values():
                g.fasterprune(sparsity)
            inps = run_block(layer, inps, kwargs)


# ---------------------------------------------------------------- evaluation


def perplexity(model, tokens, window):
    import torch
    import torch.nn.functional as F

    nll, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(tokens), window):
            chunk = tokens[s : s + window]
            if len(chunk) < 2:
                continue
            ids = torch.tensor([chunk])
            logits = model(ids, use_cache=False).logits[0].double()
            nll += F.cross_entropy(logits[:-1], ids[0, 1:], reduction="sum").item()
            count += len(chunk) - 1
    return math.exp(nll / count), count


def sparsity_of(model):
    zero = total = 0
    for layer in model.model.layers:
        for lin in linears(layer).values():
            zero += int((lin.weight == 0).sum())
            total += lin.weight.numel()
    return zero / total


def ours(args):
    if args.ours:
        with open(args.ours) as f:
            return json.load(f)
    if not args.secateur:
        return None
    cmd = [
        args.secateur, "compare", args.model, "--sparsity", str(args.sparsity),
        "--methods", args.methods, "--calib", args.calib,
        "--calib-samples", str(args.calib_samples), "--calib-len", str(args.calib_len),
        "--ppl", args.ppl, "--ppl-tokens", str(args.ppl_tokens), "--window", str(args.window),
        "--no-agent", "--json", "--out", args.out, "--device", "cpu",
    ]
    print("running:", " ".join(cmd), file=sys.stderr)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="assets/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--methods", default="wanda,sparsegpt,owl")
    p.add_argument("--calib", default="assets/data/xsum/test.jsonl:document")
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--calib-len", type=int, default=256)
    p.add_argument("--ppl", default="assets/data/quac/test.jsonl:passage")
    p.add_argument("--ppl-tokens", type=int, default=30720)
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--secateur", help="secateur binary to run `compare` with the same settings")
    p.add_argument("--ours", help="a compare.json of ours to read instead of running --secateur")
    p.add_argument("--out", default="runs/compare-pytorch")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = p.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    calib = encode(tok, "\n\n".join(read_texts(args.calib, args.calib_samples * 4)))
    windows = [calib[i * args.calib_len : (i + 1) * args.calib_len] for i in range(args.calib_samples)]
    windows = [w for w in windows if len(w) == args.calib_len]
    ppl_tokens = encode(tok, "\n\n".join(read_texts(args.ppl)))
    if args.ppl_tokens > 0:
        ppl_tokens = ppl_tokens[: args.ppl_tokens]
    print(f"calibration {len(windows)} x {args.calib_len} tokens, perplexity on {len(ppl_tokens)} tokens")
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    t = time.time()
    dense, scored = perplexity(model, ppl_tokens, args.window)
    rows = [("dense", dense, 0.0, 0.0, time.time() - t)]
    print(f"dense: PPL {dense:.3f} ({scored} tokens scored)")
    prune = {"wanda": prune_wanda, "sparsegpt": prune_sparsegpt, "owl": prune_owl}
    for name in args.methods.split(","):
        if name not in prune:
            sys.exit(f"unknown method {name} (this script knows {', '.join(prune)})")
        model.load_state_dict(dense_state)
        t = time.time()
        prune[name](model, windows, args.sparsity)
        secs = time.time() - t
        ppl, _ = perplexity(model, ppl_tokens, args.window)
        rows.append((name, ppl, sparsity_of(model), secs, time.time() - t - secs))
        print(f"{name}: PPL {ppl:.3f} ({ppl / dense:.3f}x dense), prune {secs:.1f} s")

    theirs = ours(args)
    mine = {r["method"]: r for r in theirs["rows"]} if theirs else {}
    print(f"\n| method | PyTorch PPL | x dense | secateur PPL | x dense | PyTorch prune s | secateur prune s |")
    print("|---|---|---|---|---|---|---|")
    our_dense = mine.get("dense", {}).get("ppl")
    for name, ppl, _, secs, _ in rows:
        o = mine.get(name, {})
        op = o.get("ppl")
        print(
            f"| {name} | {ppl:.3f} | {ppl / dense:.3f} | "
            + (f"{op:.3f} | {op / our_dense:.3f} | " if op and our_dense else "– | – | ")
            + f"{secs:.1f} | " + (f"{o.get('prune_seconds', 0):.1f} |" if o else "– |")
        )
    if theirs and theirs.get("ppl_tokens") != len(ppl_tokens):
        print(f"note: secateur scored {theirs.get('ppl_tokens')} tokens, this script {len(ppl_tokens)}")


if __name__ == "__main__":
    main()
