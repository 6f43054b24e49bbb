"""`koaml chat`: a run's base model and fine-tuned model side by side in the browser (Gradio).

Pick a run, type a prompt, and both models answer, streamed, with the run's prompt format (the tokenizer's
chat template when the recipe trained with it) and the chosen generation settings. The examples where the
run's latest evaluation and its base's disagree are listed; a click puts one in the prompt box. The page
listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from koaml.compare import sample_scores
from koaml.configfiles import ConfigError
from koaml.experiment import MODEL_FOLDERS, Experiment, evaluation_dir

MAX_EXAMPLES = 100


@dataclass(frozen=True)
class ChatPair:
    """A run's two models: where each loads from, and how the run formats prompts."""

    run: str
    base: str  # the reference the run is compared with
    base_path: str
    tuned_path: str
    adapter: str | None  # a LoRA adapter on top of tuned_path, when the run was not merged
    chat_template: bool  # the recipe trained with the tokenizer's chat template (data.template: model)
    enable_thinking: bool | None


def chat_pairs(exp: Experiment) -> dict[str, ChatPair]:
    """The runs whose training has finished, each with its reference: the model the experiment compares it with
    (its last ``compare`` entry, else the base model its chain starts from)."""
    references = {model: reference for reference, model in exp.comparisons}
    pairs = {}
    for name, run in exp.runs.items():
        folder = Path("results/runs") / name
        trained = folder / "trained"
        finished = next((folder / f for f in MODEL_FOLDERS if (folder / f / "config.json").is_file()), None)
        if finished:
            tuned, adapter = str(finished), None
        elif (trained / "adapter_config.json").is_file():
            tuned, adapter = None, str(trained)
        else:
            continue
        base = references.get(name, exp.root_base(name))
        try:
            base_path = model_path(exp, base)
        except ConfigError:  # a reference run that has not finished: the base model its chain starts from
            base = exp.root_base(name)
            base_path = model_path(exp, base)
        data = run.recipe.data
        pairs[name] = ChatPair(
            name,
            base,
            base_path,
            tuned or model_path(exp, run.parent_run or exp.root_base(name)),
            adapter,
            data.template == "model",
            data.enable_thinking,
        )
    return pairs


def model_path(exp: Experiment, model: str) -> str:
    """Where an evaluated model loads from: a base model's location, or a run's final folder."""
    if model in exp.base_models:
        return exp.base_models[model].location
    for step in MODEL_FOLDERS:
        if (Path("results/runs") / model / step / "config.json").is_file():
            return str(Path("results/runs") / model / step)
    raise ConfigError(
        f"{model}: no finished model in results/runs/{model}/ ({', '.join(MODEL_FOLDERS)}); run the workflow first"
    )


def disagreements(exp: Experiment, pair: ChatPair, limit: int = MAX_EXAMPLES) -> list[dict]:
    """Items of the latest evaluations where the run and its base score differently: the prompt lm-eval gave
    the models, the benchmark and task, and both scores."""
    found = []
    for bench in exp.benchmarks:
        tuned_dir, base_dir = Path(evaluation_dir(pair.run, bench)), Path(evaluation_dir(pair.base, bench))
        for samples in sorted(tuned_dir.glob("samples_*.jsonl")):
            task = samples.stem.removeprefix("samples_")
            rows = [json.loads(line) for line in samples.read_text(encoding="utf-8").splitlines() if line.strip()]
            if not rows or not rows[0].get("metrics"):
                continue
            metric, filter_name = rows[0]["metrics"][0], rows[0].get("filter", "none")
            base = sample_scores(base_dir, task, metric, filter_name)
            for row in rows:
                tuned = row.get(metric)
                if row["doc_id"] in base and isinstance(tuned, (int, float)) and tuned != base[row["doc_id"]]:
                    found.append(
                        {
                            "benchmark": bench,
                            "task": task,
                            "prompt": prompt_of(row),
                            "target": target_of(row),
                            "base_score": base[row["doc_id"]],
                            "tuned_score": float(tuned),
                        }
                    )
                    if len(found) >= limit:
                        return found
    return found


def target_of(sample: dict) -> str:
    """The right answer of a logged sample: for multiple choice (a target index into the per-choice requests)
    the text of that choice, else the target as it is."""
    target, requests = sample.get("target", ""), sample.get("arguments") or []
    if isinstance(target, int) and 0 <= target < len(requests):
        request = requests[target]
        if isinstance(request, (list, tuple)) and len(request) > 1 and isinstance(request[1], str):
            return str(request[1]).strip()
    return str(target)


def prompt_of(sample: dict) -> str:
    """The text lm-eval gave the model for a logged sample (the context of its first request)."""
    arguments = sample.get("arguments") or [[""]]
    first = arguments[0]
    if isinstance(first, dict):  # lm-eval's {"gen_args_0": {"arg_0": context, ...}} layout
        first = list(first.values())
    return str(first[0] if isinstance(first, (list, tuple)) else first)


class Models:
    """The loaded models of one chat pair (loaded on first use, one pair at a time)."""

    def __init__(self):
        self.loaded: dict[str, tuple] = {}
        self.lock = threading.Lock()

    def get(self, pair: ChatPair) -> tuple:
        with self.lock:
            if pair.run not in self.loaded:
                self.loaded = {pair.run: (load(pair.base_path), load(pair.tuned_path, pair.adapter))}
            return self.loaded[pair.run]


def load(path: str, adapter: str | None = None) -> tuple:
    """(model, tokenizer) for generation: bfloat16 on a GPU, float32 on CPUs; ``adapter`` applied unmerged."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from koaml.modeling import device

    on_gpu = device() == "cuda"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if on_gpu else torch.float32)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    tokenizer = AutoTokenizer.from_pretrained(adapter or path)
    return model.to(device()).eval(), tokenizer


def render(tokenizer, prompt: str, chat_template: bool, enable_thinking: bool | None) -> str:
    """The prompt as the model sees it: the tokenizer's chat template around a user message, or as typed."""
    if not chat_template or not tokenizer.chat_template:
        return prompt
    kwargs = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    messages = [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)


def stream(model, tokenizer, text: str, max_new_tokens: int, temperature: float, greedy: bool) -> Iterator[str]:
    """The answer to ``text`` as it grows, token by token (transformers' TextIteratorStreamer)."""
    from transformers import TextIteratorStreamer

    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    settings = {"do_sample": False} if greedy or temperature <= 0 else {"do_sample": True, "temperature": temperature}
    kwargs = dict(**inputs, streamer=streamer, max_new_tokens=int(max_new_tokens), **settings)
    kwargs["pad_token_id"] = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    thread = threading.Thread(target=model.generate, kwargs=kwargs, daemon=True)
    thread.start()
    answer = ""
    for piece in streamer:
        answer += piece
        yield answer
    thread.join()


def build_app(exp: Experiment, pairs: dict[str, ChatPair]):
    """The Gradio page: run picker, prompt, generation settings, both answers, and the disagreements."""
    import gradio as gr

    models = Models()
    names = list(pairs)

    def examples_of(run: str) -> list[list]:
        rows = disagreements(exp, pairs[run]) if run in pairs else []
        return [
            [r["prompt"], f"{r['benchmark']}/{r['task']}", r["target"], f"{r['base_score']:g} -> {r['tuned_score']:g}"]
            for r in rows
        ]

    def describe(run: str) -> str:
        pair = pairs[run]
        template = "the tokenizer's chat template" if pair.chat_template else "the prompt as typed (no chat template)"
        adapter = f" + adapter `{pair.adapter}`" if pair.adapter else ""
        return (
            f"**{run}**: base `{pair.base}` (`{pair.base_path}`) vs fine-tuned `{pair.tuned_path}`{adapter}; "
            f"prompts formatted with {template}."
        )

    def answer(run, prompt, use_template, max_new_tokens, temperature, greedy):
        pair = pairs[run]
        (base_model, base_tok), (tuned_model, tuned_tok) = models.get(pair)
        base_text = render(base_tok, prompt, use_template, pair.enable_thinking)
        tuned_text = render(tuned_tok, prompt, use_template, pair.enable_thinking)
        base_answer = ""
        for base_answer in stream(base_model, base_tok, base_text, max_new_tokens, temperature, greedy):
            yield base_answer, ""
        for tuned_answer in stream(tuned_model, tuned_tok, tuned_text, max_new_tokens, temperature, greedy):
            yield base_answer, tuned_answer

    def pick_run(run):
        return describe(run), pairs[run].chat_template, gr.Dataset(samples=examples_of(run) or [["", "", "", ""]])

    with gr.Blocks(title=f"koa-ml chat: {exp.name}") as app:
        gr.Markdown(f"# koa-ml chat: {exp.name}\nThe base model and the fine-tuned model answer the same prompt.")
        run = gr.Dropdown(names, value=names[0], label="run", elem_id="run")
        about = gr.Markdown(describe(names[0]), elem_id="about")
        prompt = gr.Textbox(label="prompt", lines=3, elem_id="prompt")
        with gr.Row():
            use_template = gr.Checkbox(pairs[names[0]].chat_template, label="chat template", elem_id="template")
            greedy = gr.Checkbox(True, label="greedy", elem_id="greedy")
            temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="temperature", elem_id="temperature")
            max_new_tokens = gr.Slider(1, 2048, value=64, step=1, label="max new tokens", elem_id="max-new-tokens")
        send = gr.Button("Generate", variant="primary", elem_id="generate")
        with gr.Row():
            base_out = gr.Textbox(label="base", lines=8, elem_id="base-answer")
            tuned_out = gr.Textbox(label="fine-tuned", lines=8, elem_id="tuned-answer")
        gr.Markdown("### Where the latest evaluations disagree (click one to use its prompt)")
        shown = gr.Textbox(visible=False)
        examples = gr.Dataset(
            components=[shown, gr.Textbox(visible=False), gr.Textbox(visible=False), gr.Textbox(visible=False)],
            headers=["prompt", "benchmark/task", "target", "score base -> fine-tuned"],
            samples=examples_of(names[0]) or [["", "", "", ""]],
            elem_id="disagreements",
        )
        inputs = [run, prompt, use_template, max_new_tokens, temperature, greedy]
        send.click(answer, inputs, [base_out, tuned_out])
        prompt.submit(answer, inputs, [base_out, tuned_out])
        run.change(pick_run, run, [about, use_template, examples])
        examples.click(lambda sample: sample[0], examples, prompt)
    return app


def serve(exp: Experiment, host: str, port: int, run: str | None = None) -> None:
    """Start the chat page for an experiment (blocks until stopped). Gradio's usage analytics stay off (compute
    nodes are offline, and nothing leaves the machine unasked)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    pairs = chat_pairs(exp)
    if not pairs:
        raise ConfigError(
            f"{exp.name}: no run has finished training yet (results/runs/<run>/trained); run the workflow"
        )
    if run is not None:
        if run not in pairs:
            raise ConfigError(f"--run: {run}: not a finished run; finished: {', '.join(pairs)}")
        pairs = {run: pairs[run], **pairs}
    build_app(exp, pairs).launch(server_name=host, server_port=port, show_error=True)
