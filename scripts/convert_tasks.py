#!/usr/bin/env python3
"""Converts the public zero-shot datasets' own files (JSON or JSONL exports, given as local
paths; parquet too where pyarrow is installed) into neuroal's task format, one example a line:

    {"task": ..., "context": ..., "choices": [...], "label": k[, "suffix": ...]}

with the prompts lm-evaluation-harness uses for each task. Nothing is downloaded.

    python3 scripts/convert_tasks.py --task boolq --input boolq/validation.jsonl --output boolq.jsonl

Tasks and their mapping (lm-eval's target delimiter " " is part of every choice):
  boolq          "{passage}\\nQuestion: {question}?\\nAnswer:"  → [" no", " yes"], label = answer
  rte            "{premise}\\nQuestion: {hypothesis} True or False?\\nAnswer:" → [" True", " False"]
                 (label 0 = entailment = True)
  hellaswag      preprocess("{activity_label}: {ctx_a} {ctx_b.capitalize()}") → " " + preprocess(ending)
  winogrande     context = sentence up to "_", choices = [option1, option2],
                 suffix = " " + the rest of the sentence (partial scoring), label = answer − 1
  arc_easy       "Question: {question}\\nAnswer:" → " " + choice text, label = index of answerKey
  arc_challenge  as arc_easy
  openbookqa     "{question_stem}" → " " + choice text, label = index of answerKey
"""
import argparse
import json
import re
import sys

TASKS = ["boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"]


def hellaswag_preprocess(text):
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def choices_and_label(choices, answer_key):
    """ARC / OpenBookQA choices: {"text": [...], "label": [...]} and an answer key."""
    texts, labels = choices["text"], choices["label"]
    return [" " + t for t in texts], labels.index(answer_key)


def convert(task, rec):
    if task == "boolq":
        answer = rec["answer"] if "answer" in rec else bool(rec["label"])
        return {"context": f"{rec['passage']}\nQuestion: {rec['question']}?\nAnswer:",
                "choices": [" no", " yes"], "label": int(bool(answer))}
    if task == "rte":
        label = rec["label"]
        if isinstance(label, str):
            label = 0 if label == "entailment" else 1
        return {"context": f"{rec['premise']}\nQuestion: {rec['hypothesis']} True or False?\nAnswer:",
                "choices": [" True", " False"], "label": int(label)}
    if task == "hellaswag":
        ctx = rec["ctx_a"] + " " + rec["ctx_b"].capitalize()
        return {"context": hellaswag_preprocess(rec["activity_label"] + ": " + ctx),
                "choices": [" " + hellaswag_preprocess(e) for e in rec["endings"]], "label": int(rec["label"])}
    if task == "winogrande":
        sentence = rec["sentence"]
        idx = sentence.index("_")
        return {"context": sentence[:idx], "choices": [rec["option1"], rec["option2"]],
                "suffix": " " + sentence[idx + 1:].strip(), "label": int(rec["answer"]) - 1}
    if task in ("arc_easy", "arc_challenge"):
        question = rec["question"]
        if isinstance(question, dict):  # the original ARC JSONL nests stem and choices
            choices = {"text": [c["text"] for c in question["choices"]], "label": [c["label"] for c in question["choices"]]}
            question = question["stem"]
        else:
            choices = rec["choices"]
        texts, label = choices_and_label(choices, rec["answerKey"])
        return {"context": f"Question: {question}\nAnswer:", "choices": texts, "label": label}
    if task == "openbookqa":
        question = rec.get("question_stem") or rec["question"]["stem"]
        choices = rec.get("choices") or {"text": [c["text"] for c in rec["question"]["choices"]],
                                         "label": [c["label"] for c in rec["question"]["choices"]]}
        texts, label = choices_and_label(choices, rec["answerKey"])
        return {"context": question, "choices": texts, "label": label}
    raise ValueError(f"unknown task {task!r} (expected one of {', '.join(TASKS)})")


def read_records(path):
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq  # optional: only for parquet exports
        return pq.read_table(path).to_pylist()
    text = open(path, encoding="utf-8").read()
    stripped = text.lstrip()
    if stripped.startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True, choices=TASKS)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    args = ap.parse_args()
    try:
        records = read_records(args.input)
        with open(args.output, "w", encoding="utf-8") as out:
            for rec in records:
                line = {"task": args.task, **convert(args.task, rec)}
                out.write(json.dumps(line, ensure_ascii=False) + "\n")
    except (KeyError, ValueError, json.JSONDecodeError) as e:
        print(f"error: {args.input}: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"{len(records)} examples written to {args.output}")


if __name__ == "__main__":
    main()
