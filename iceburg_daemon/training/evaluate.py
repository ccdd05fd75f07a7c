"""The evaluation child: models x items -> per-item answer loss and greedy suite answers, appended to
results.jsonl as they are computed (a restarted evaluation skips what is there).

`python -m iceburg_daemon.training --eval-dir DIR` reads DIR/request.json, written by the daemon:
  models: [{name, path, weights}]   merged candidate, champion, base (folders, or the base's reference)
  loss_items: [{hash, messages}]    whole conversations; the loss is over the assistant tokens only
  gen_items: [{hash, messages, max_new_tokens}]  prompts ending with a user turn
  todo: {model name: {"loss": [hash...], "gen": [hash...]}}   what the daemon's cache does not have yet
  max_length, batch_size, seed, device
Exit codes: 0 done; 75 interrupted (SIGTERM; results so far are kept); 3 a model cannot be loaded; 1 other.
"""

from __future__ import annotations

import json
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_MODEL, EXIT_INTERRUPTED = 0, 1, 3, 75


def main(eval_dir: Path) -> int:
    stopped = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopped.append(1))
    request = json.loads((eval_dir / "request.json").read_text())
    try:
        return _run(eval_dir, request, lambda: bool(stopped))
    except Exception as exc:  # noqa: BLE001 - the child's last word: the reason goes to error.json
        from iceburg_daemon.training.model import BaseUnavailable

        code = EXIT_MODEL if isinstance(exc, BaseUnavailable) else EXIT_FAILED
        (eval_dir / "error.json").write_text(json.dumps({
            "reason": "model_unavailable" if code == EXIT_MODEL else type(exc).__name__, "message": str(exc),
            "traceback": traceback.format_exc()}))
        print(f"evaluation failed: {exc}", file=sys.stderr)
        return code


def _run(eval_dir: Path, req: dict[str, Any], should_stop: Any) -> int:
    import torch

    from iceburg_daemon.training import data, model as models
    from iceburg_daemon.training.progress import Progress

    progress = Progress(eval_dir)
    device, dtype = models.pick_device(req.get("device", "auto"))
    loss_items = {i["hash"]: i for i in req["loss_items"]}
    gen_items = {i["hash"]: i for i in req["gen_items"]}
    judging = req.get("judge")
    total = sum(len(t["loss"]) + len(t["gen"]) for t in req["todo"].values()) + (len(judging["todo"]) if judging
                                                                                 else 0)
    done = 0
    answers = {name: dict(given) for name, given in (judging or {}).get("answers", {}).items()}
    with open(eval_dir / "results.jsonl", "a", encoding="utf-8") as out:

        def emit(spec: dict[str, Any], kind: str, item: str, **fields: Any) -> None:
            nonlocal done
            out.write(json.dumps({"model": spec["name"], "weights": spec["weights"], "kind": kind,
                                  "item": item, **fields}) + "\n")
            out.flush()
            done += 1
            progress.update(phase=kind, model=spec["name"], done=done, total=total)

        for spec in req["models"]:
            todo = req["todo"].get(spec["name"], {"loss": [], "gen": []})
            if not todo["loss"] and not todo["gen"]:
                continue
            progress.update(phase="loading", model=spec["name"], done=done, total=total)
            torch.manual_seed(req["seed"])
            net, tok, _ = models.load_base(spec["path"], allow_download=False, dtype=dtype, attn="sdpa")
            net.to(device).eval()
            data.ensure_chat_template(tok)

            batch = req["batch_size"]
            hashes = todo["loss"]
            for start in range(0, len(hashes), batch):
                if should_stop():
                    return EXIT_INTERRUPTED
                chunk = [loss_items[h] for h in hashes[start : start + batch]]
                began = time.perf_counter()
                scored = item_losses(net, tok, chunk, req["max_length"], device)
                each = (time.perf_counter() - began) / len(chunk)  # the batch's time, shared: what benchmarks sum
                for h, (loss, tokens, why) in zip(hashes[start : start + batch], scored):
                    emit(spec, "loss", h, loss=loss, tokens=tokens, skipped=why, seconds=round(each, 4))
            by_length: dict[int, list[str]] = {}
            for h in todo["gen"]:
                by_length.setdefault(int(gen_items[h]["max_new_tokens"]), []).append(h)
            for max_new, group in sorted(by_length.items()):
                for start in range(0, len(group), batch):
                    if should_stop():
                        return EXIT_INTERRUPTED
                    chunk = [gen_items[h] for h in group[start : start + batch]]
                    began = time.perf_counter()
                    generated = generate(net, tok, chunk, max_new, device)
                    each = (time.perf_counter() - began) / len(chunk)
                    for h, (text, finished, tokens) in zip(group[start : start + batch], generated):
                        emit(spec, "gen", h, answer=text, finished=finished, tokens=tokens, seconds=round(each, 4))
                        answers.setdefault(spec["name"], {})[h] = text
            del net
        if judging:
            candidate = next(s for s in req["models"] if s["name"] == judging["candidate"])
            if not _judge(judging, gen_items, answers, lambda key, verdict: emit(candidate, "judge", key, **verdict),
                          should_stop):
                return EXIT_INTERRUPTED
    progress.update(phase="done", done=done, total=total, finished_at=time.time())
    return EXIT_OK


def _judge(judging: dict[str, Any], gen_items: dict[str, Any], answers: dict[str, dict[str, str]], emit: Any,
           should_stop: Any) -> bool:
    """Candidate vs baseline on each suite prompt, both orders, by the Ollama judge. An unreachable judge ends
    the judging (logged in the child's log; the report says the judge was unavailable). False if stopped."""
    from iceburg_daemon.errors import PublishError
    from iceburg_daemon.evaluate.judge import judge_key, judge_pair
    from iceburg_daemon.ollama import OllamaClient

    client = OllamaClient(judging["host"], timeout=300)

    def ask(prompt: str) -> str:
        return client.chat(judging["model"], [{"role": "user", "content": prompt}],
                           {"temperature": 0, "num_predict": 8})

    mine, theirs = answers.get(judging["candidate"], {}), answers.get(judging["baseline"], {})
    for key in judging["todo"]:
        if should_stop():
            return False
        if key not in mine or key not in theirs:
            continue
        question = gen_items[key]["messages"][-1]["content"]
        try:
            verdict = judge_pair(ask, question, mine[key], theirs[key])
        except PublishError as exc:
            print(f"judge unavailable: {exc}", file=sys.stderr)
            break
        emit(judge_key(key, judging["baseline_weights"]), verdict)
    return True


def item_losses(net: Any, tok: Any, items: list[dict[str, Any]], max_length: int, device: Any
                ) -> list[tuple[float | None, int, str | None]]:
    """(mean answer-token loss, answer tokens, why skipped) per conversation; the batch is right-padded and the
    LM head runs per item on its answer positions only (the full logits of a batch would not fit)."""
    import torch

    from iceburg_daemon.training.data import IGNORE, encode_conversation

    encoded = [encode_conversation(tok, i["messages"], max_length, "left") for i in items]
    live = [(k, e) for k, e in enumerate(encoded) if not isinstance(e, str)]
    results: list[tuple[float | None, int, str | None]] = [
        (None, 0, e if isinstance(e, str) else None) for e in encoded]
    if not live:
        return results
    width = max(len(e.input_ids) for _, e in live)
    pad = next((t for t in (tok.pad_token_id, tok.eos_token_id) if t is not None), 0)
    ids = torch.full((len(live), width), pad, dtype=torch.long)
    labels = torch.full((len(live), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(live), width), dtype=torch.long)
    for row, (_, e) in enumerate(live):
        ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[row, : len(e.labels)] = torch.tensor(e.labels)
        mask[row, : len(e.input_ids)] = 1
    with torch.no_grad():
        hidden = net.get_decoder()(input_ids=ids.to(device), attention_mask=mask.to(device),
                                   use_cache=False).last_hidden_state
        head = net.get_output_embeddings()
        for row, (k, _) in enumerate(live):
            where = (labels[row] != IGNORE).nonzero().squeeze(1)
            logits = head(hidden[row, where.to(device)]).float()
            loss = torch.nn.functional.cross_entropy(logits, labels[row, where].to(device), reduction="mean")
            results[k] = (float(loss), int(where.numel()), None)
    return results


def generate(net: Any, tok: Any, items: list[dict[str, Any]], max_new_tokens: int, device: Any
             ) -> list[tuple[str, bool, int]]:
    """Greedy answers for a batch of prompts (left padding): (text, ended by the model, new tokens)."""
    import torch

    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    prompts = [tok.apply_chat_template(i["messages"], tokenize=False, add_generation_prompt=True) for i in items]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    with torch.no_grad():
        out = net.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                           pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    new = out[:, enc["input_ids"].shape[1]:]
    results = []
    for row in new.tolist():
        ended = tok.eos_token_id in row
        kept = row[: row.index(tok.eos_token_id)] if ended else row
        kept = [t for t in kept if t != tok.pad_token_id]
        results.append((tok.decode(kept, skip_special_tokens=True).strip(), ended, len(kept)))
    return results
