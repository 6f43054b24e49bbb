"""`koaml chat`: the run and model pairing, the disagreements, and the page in a real headless Chromium."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from browser import Page
from conftest import REPO, THINKING_TEMPLATE, copy_results

from koaml.configfiles import load_yaml

SAMPLES = {  # doc_id -> (base acc, fine-tuned acc)
    0: (0.0, 1.0),
    1: (1.0, 1.0),
    2: (1.0, 0.0),
}


def samples(path, scores):
    """Multiple-choice samples as lm-eval logs them: one (context, choice) request per choice, the target an index."""
    path.mkdir(parents=True, exist_ok=True)
    rows = [
        {"doc_id": d, "filter": "none", "metrics": ["acc"], "acc": score, "target": 1,
         "arguments": [[f"Question: What is {d} plus 1?\nAnswer:", f" {d + k}"] for k in range(3)]}
        for d, score in scores.items()
    ]  # fmt: skip
    (path / "samples_demo_arith_mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def chat_workdir(tmp_path_factory, demo_workflow):
    """The finished demo as it stood midway: tiny-lora trained (its adapter not merged yet), the other runs not
    trained, and per-sample logs of the base and tiny-lora on demo_arith_mc that disagree on two items (SAMPLES)."""
    workdir = copy_results(demo_workflow, tmp_path_factory.mktemp("chat") / "workflow")
    shutil.rmtree(workdir / "results/runs/tiny-lora/merged")
    for run in ("tiny-qlora", "tiny-full"):
        shutil.rmtree(workdir / "results/runs" / run)
    shutil.rmtree(workdir / "results/eval")
    samples(workdir / "results/eval/tiny/demo_arith_mc", {d: b for d, (b, _) in SAMPLES.items()})
    samples(workdir / "results/eval/tiny-lora/demo_arith_mc", {d: t for d, (_, t) in SAMPLES.items()})
    return workdir


def experiment(workdir):
    from koaml.config import load_experiment

    return load_experiment(load_yaml(workdir / "config/config.yaml"), source=str(workdir / "config/config.yaml"))


def test_finished_runs_pair_with_their_base_and_disagreements(chat_workdir, monkeypatch):
    from koaml.chat import chat_pairs, disagreements

    monkeypatch.chdir(chat_workdir)
    exp = experiment(chat_workdir)
    pairs = chat_pairs(exp)
    assert list(pairs) == ["tiny-lora"]  # the other runs have not trained
    pair = pairs["tiny-lora"]
    assert (pair.base, pair.base_path) == ("tiny", "results/base/tiny/model")
    assert (pair.tuned_path, pair.adapter) == ("results/base/tiny/model", "results/runs/tiny-lora/trained")
    assert pair.chat_template is False  # the demo recipe trains on prompts as they are (template: none)
    found = disagreements(exp, pair)
    assert [(r["prompt"], r["target"], r["base_score"], r["tuned_score"]) for r in found] == [
        ("Question: What is 0 plus 1?\nAnswer:", "1", 0.0, 1.0),  # the right choice's text, not its index
        ("Question: What is 2 plus 1?\nAnswer:", "3", 1.0, 0.0),
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_addresses(port: int) -> set[str]:
    """The local IPv4 addresses with a socket listening on ``port`` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def test_chat_page_answers_with_both_models_in_a_real_browser(chat_workdir, browser, tmp_path):
    port = free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    log = (tmp_path / "chat.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "koaml.cli", "chat", "--port", str(port)], cwd=chat_workdir, env=env,
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    page = None
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "chat.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the chat page did not come up"
                time.sleep(0.5)
        assert listening_addresses(port) == {"127.0.0.1"}  # this machine only, by default

        page = Page(browser, tmp_path / "profile")
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for("document.querySelector('#prompt textarea') !== null")
        assert "tiny-lora" in page.evaluate("document.querySelector('#about').innerText")
        # one click puts a disagreement's prompt in the box
        page.wait_for("document.querySelectorAll('#disagreements tbody tr').length === 2")
        page.evaluate("document.querySelector('#disagreements tbody tr').click()")
        prompt = page.wait_for("document.querySelector('#prompt textarea').value")
        assert prompt == "Question: What is 0 plus 1?\nAnswer:"
        page.evaluate("document.querySelector('#generate').click()")
        # the answers stream in: wait for text, not for the first token (which may be a space)
        base = page.wait_for("document.querySelector('#base-answer textarea').value.trim()", timeout=180)
        tuned = page.wait_for("document.querySelector('#tuned-answer textarea').value.trim()", timeout=180)
        assert base and tuned
        shot = tmp_path / "chat.png"
        page.screenshot(shot)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        (REPO / "test-artifacts").mkdir(exist_ok=True)
        shutil.copy(shot, REPO / "test-artifacts/chat.png")
    finally:
        if page is not None:
            page.close()
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_prompts_take_the_run_s_template_and_thinking_switch(tiny_model):
    from transformers import AutoTokenizer

    from koaml.chat import render

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.chat_template = THINKING_TEMPLATE
    assert render(tokenizer, "1+1?", chat_template=False, enable_thinking=None) == "1+1?"
    direct = render(tokenizer, "1+1?", chat_template=True, enable_thinking=False)
    assert direct == "<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert "<think>" not in render(tokenizer, "1+1?", chat_template=True, enable_thinking=None)
