#!/usr/bin/env python3
"""Build secateur's factual-QA sets from data that PyPI packages ship.

usage: make-facts.py COUNTRYINFO_DATA_DIR PERIODICTABLE_CORE_PY OUT_DIR

Sources (read as data, nothing is imported):
- countryinfo 1.0.1 (MIT, (c) 2018 Porimol Chandro): one JSON file per country with
  `name`, `capital` and `altSpellings`;
- periodictable 2.1.0 (public domain, NIST): the `element_base` table of core.py
  (atomic number -> name, symbol).

Questions, one short unambiguous fact each, asked in chat style by the QA evaluation:
- "What is the capital of {country}?" -> the capital;
- "{capital} is the capital of which country?" -> the country's name and its spelled-out
  alternative names (codes such as "FR" are dropped: alias matching is a substring test);
- "Which chemical element has the symbol {symbol}?" -> the element's name.
The element's symbol is never an answer: one or two letters match almost any text.

Two disjoint splits, by entity (a country's two questions go to the same split):
`probe.jsonl` for the in-loop knowledge probe and `test.jsonl` for the final report.
Entities are sorted by name and dealt alternately, so each split covers A-Z. The output
is deterministic: `secateur fetch` checks its sha256.
"""

import ast
import glob
import json
import os
import sys


def countries(data_dir):
    out = []
    for path in sorted(glob.glob(os.path.join(data_dir, "*.json"))):
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        name, capital = d.get("name"), d.get("capital")
        if isinstance(capital, list):
            capital = capital[0] if capital else None
        if not name or not capital:
            continue
        # Spelled-out alternatives only: two- and three-letter codes match anything.
        alts = [a for a in d.get("altSpellings") or [] if len(a) > 3 and not a.isupper()]
        out.append((name, capital, alts))
    out.sort(key=lambda c: c[0])
    return out


def elements(core_py):
    with open(core_py, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        target = getattr(node, "target", None) or (getattr(node, "targets", None) or [None])[0]
        if isinstance(target, ast.Name) and target.id == "element_base":
            table = ast.literal_eval(node.value)
            return sorted(
                (name, sym) for z, (name, sym, _, _) in table.items() if z > 0
            )
    sys.exit(f"make-facts: no element_base table in {core_py}")


def unique(values):
    seen, out = set(), []
    for v in values:
        if v.lower() not in seen:
            seen.add(v.lower())
            out.append(v)
    return out


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__.split("\n\n")[1])
    data_dir, core_py, out_dir = sys.argv[1:]
    splits = {"probe": [], "test": []}
    names = ("probe", "test")
    for i, (name, capital, alts) in enumerate(countries(data_dir)):
        split = splits[names[i % 2]]
        split.append({"question": f"What is the capital of {name}?",
                      "answer": [capital], "kind": "capital"})
        split.append({"question": f"{capital} is the capital of which country?",
                      "answer": unique([name] + alts), "kind": "country"})
    for i, (name, sym) in enumerate(elements(core_py)):
        splits[names[i % 2]].append({
            "question": f"Which chemical element has the symbol {sym}?",
            "answer": [name], "kind": "element"})
    os.makedirs(out_dir, exist_ok=True)
    for split, items in splits.items():
        path = os.path.join(out_dir, f"{split}.jsonl")
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            for item in items:
                f.write(json.dumps(item, ensure_ascii=False) + "\n")
        print(f"make-facts: {path}: {len(items)} questions")


if __name__ == "__main__":
    main()
