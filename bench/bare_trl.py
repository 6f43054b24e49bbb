"""A bare TRL training script, as a user writes one without koa-ml: datasets' JSON loader, the model and tokenizer
from transformers, peft's ``LoraConfig`` and TRL's trainer, then the model saved. It imports nothing from koaml.

Its settings come from a JSON file (bench/train_overhead.py writes it from the recipe koa-ml trains, so the two
run the same training): ``trainer`` (SFT or DPO), ``model``, ``data`` (a folder with train.jsonl and, when
``eval``, eval.jsonl), ``out``, ``dtype``, ``attn_implementation``, ``lora`` (LoraConfig's arguments, or null for
full fine-tuning), ``threads`` and ``config`` (the TRL config's keyword arguments).

    python bench/bare_trl.py SETTINGS.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(settings_file: str) -> None:
    import torch
    import trl
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    s = json.loads(Path(settings_file).read_text())
    torch.set_num_threads(s["threads"])
    files = {"train": f"{s['data']}/train.jsonl"}
    if s["eval"]:
        files["eval"] = f"{s['data']}/eval.jsonl"
    data = load_dataset("json", data_files=files)
    tokenizer = AutoTokenizer.from_pretrained(s["model"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        s["model"], dtype=getattr(torch, s["dtype"]), attn_implementation=s["attn_implementation"]
    )
    trainer = getattr(trl, f"{s['trainer']}Trainer")(
        model=model,
        args=getattr(trl, f"{s['trainer']}Config")(**s["config"]),
        train_dataset=data["train"],
        eval_dataset=data.get("eval"),
        processing_class=tokenizer,
        peft_config=LoraConfig(**s["lora"], task_type="CAUSAL_LM") if s["lora"] else None,
    )
    trainer.train()
    trainer.save_model(s["out"])
    (Path(s["out"]) / "log_history.json").write_text(json.dumps(trainer.state.log_history))


if __name__ == "__main__":
    main(sys.argv[1])
