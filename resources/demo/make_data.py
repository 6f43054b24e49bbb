"""Generate the demo's bundled arithmetic data (deterministic; the outputs are committed).

    python resources/demo/make_data.py   # rewrites resources/demo/data/*.jsonl

Questions add or subtract 1 or 10 from a number between 10 and 989. Training and held-out
(validation, test) questions are disjoint. The multiple-choice options are the results of all four
operations, so only a model that has learned which operation was asked picks the right one.
A tiny model learns this in about a minute on a CPU (digit-wise, without the modular-arithmetic
plateau that full two-number addition has).

``arith_preference_train.jsonl`` holds the training questions as DPO preference rows: the right answer
is chosen, the result of another operation (one of the multiple-choice distractors) rejected.
``arith_prompts_train.jsonl`` holds them as GRPO prompts with the reference ``answer`` the reward reads.
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
SEED = 1234
N_TRAIN, N_VALIDATION, N_TEST = 3000, 200, 200
OPERATIONS = {"plus 1": 1, "minus 1": -1, "plus 10": 10, "minus 10": -10}


def main() -> None:
    rng = random.Random(SEED)
    items = [(n, op) for n in range(10, 990) for op in OPERATIONS]
    rng.shuffle(items)
    splits = {
        "arith_train.jsonl": items[:N_TRAIN],
        "arith_validation.jsonl": items[N_TRAIN : N_TRAIN + N_VALIDATION],
        "arith_test.jsonl": items[N_TRAIN + N_VALIDATION : N_TRAIN + N_VALIDATION + N_TEST],
    }
    out = HERE / "data"
    out.mkdir(exist_ok=True)
    for name, split in splits.items():
        with open(out / name, "w") as f:
            for n, op in split:
                question = f"What is {n} {op}?"
                answer = n + OPERATIONS[op]
                if name == "arith_train.jsonl":
                    row = {"prompt": f"Question: {question}\nAnswer:", "completion": f" {answer}"}
                else:
                    choices = sorted(str(n + delta) for delta in OPERATIONS.values())
                    rng.shuffle(choices)
                    row = {
                        "question": question,
                        "answer": str(answer),
                        "choices": choices,
                        "label": choices.index(str(answer)),
                    }
                f.write(json.dumps(row) + "\n")
    preference_rng = random.Random(SEED + 1)  # its own stream: the files above do not change
    with open(out / "arith_preference_train.jsonl", "w") as f:
        for n, op in splits["arith_train.jsonl"]:
            wrong = preference_rng.choice([d for d in OPERATIONS.values() if d != OPERATIONS[op]])
            row = {"prompt": f"Question: What is {n} {op}?\nAnswer:", "chosen": f" {n + OPERATIONS[op]}"}
            f.write(json.dumps({**row, "rejected": f" {n + wrong}"}) + "\n")
    with open(out / "arith_prompts_train.jsonl", "w") as f:
        for n, op in splits["arith_train.jsonl"]:
            row = {"prompt": f"Question: What is {n} {op}?\nAnswer:", "answer": str(n + OPERATIONS[op])}
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
