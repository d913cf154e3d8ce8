#!/usr/bin/env python3
"""A zero-shot task file from WikiText-2 itself: given a sentence, which of four sentences
follows it in the article (the true next sentence and three drawn from elsewhere in the file).
With `--kind order`: which of two continuations is the true next sentence rather than the same
words shuffled (a test of word order rather than of topic).

    python3 scripts/make_wikitext_tasks.py ../shared/data/wikitext-2/test.txt /tmp/wt2-next.jsonl [--n 500] [--seed 0] [--kind next|order]

The output is written where asked (never into the repository: the data stays in ../shared).
"""
import argparse
import json
import random


def sentences_by_paragraph(text):
    """Sentences (ending in " .") of each non-heading paragraph line."""
    paragraphs = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("="):
            continue
        parts = [p.strip() + " ." for p in line.split(" . ") if len(p.split()) >= 5]
        if len(parts) >= 2:
            paragraphs.append(parts)
    return paragraphs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kind", choices=["next", "order"], default="next")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    paragraphs = sentences_by_paragraph(open(args.input, encoding="utf-8").read())
    pool = [s for p in paragraphs for s in p]
    pairs = [(p[i], p[i + 1]) for p in paragraphs for i in range(len(p) - 1)]
    rng.shuffle(pairs)
    with open(args.output, "w", encoding="utf-8") as out:
        for ctx, right in pairs[:args.n]:
            if args.kind == "order":
                words = right.split()
                shuffled = words[:]
                while shuffled == words:
                    rng.shuffle(shuffled)
                choices = [" " + right, " " + " ".join(shuffled)]
                label = rng.randrange(2)
                if label == 1:
                    choices.reverse()
                out.write(json.dumps({"task": "wikitext_word_order", "context": ctx, "choices": choices, "label": label}) + "\n")
                continue
            wrong = []
            while len(wrong) < 3:
                s = rng.choice(pool)
                if s != right and s != ctx and s not in wrong:
                    wrong.append(s)
            choices = [right] + wrong
            rng.shuffle(choices)
            out.write(json.dumps({"task": "wikitext_next_sentence", "context": ctx,
                                  "choices": [" " + c for c in choices], "label": choices.index(right)}) + "\n")
    print(f"{min(args.n, len(pairs))} examples written to {args.output}")


if __name__ == "__main__":
    main()
