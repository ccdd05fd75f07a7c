"""The onnx MiniLM embedder on the realistic mix's answers: records/s and where the time goes (WordPiece
tokenising, the onnxruntime session, pooling), per batch size. Decides whether it can be the default provider
(the issue's bar: at least 1,000 records/s, so a backfill is not held back by it).

Usage: python benchmarks/embed_onnx.py [N]   (default 2,000 answers; batches of 32, 128 and 512)
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from iceburg_daemon.quality.embed import OnnxEmbedder

from corpus import realistic_lines


def answers(n: int) -> list[str]:
    out = []
    for line in realistic_lines(n):
        record = json.loads(line)
        messages = record.get("messages")
        out.append(messages[-1]["content"] if messages else str(record.get("response") or record.get("output", "")))
    return out


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    texts = answers(n)
    embedder = OnnxEmbedder()
    embedder.embed(texts[:8])  # loads the session (not timed)
    tokenizer, session = embedder._tokenizer, embedder._session
    tokens = [len(e.ids) for e in tokenizer.encode_batch(texts)]
    print(f"{n:,} answers, {np.mean(tokens):.0f} tokens on average after truncation to {embedder.max_length}"
          f" ({np.mean([t == embedder.max_length for t in tokens]):.0%} truncated)")
    for size in (32, 128, 512):
        spent = {"tokenise": 0.0, "onnx session": 0.0, "pool + norm": 0.0}
        started = time.perf_counter()
        for i in range(0, n, size):
            batch = texts[i : i + size]
            t = time.perf_counter()
            enc = tokenizer.encode_batch(batch)
            ids = np.array([e.ids for e in enc], dtype=np.int64)
            mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
            spent["tokenise"] += time.perf_counter() - t
            t = time.perf_counter()
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in {x.name for x in session.get_inputs()}:
                feeds["token_type_ids"] = np.zeros_like(ids)
            hidden = session.run(None, feeds)[0]
            spent["onnx session"] += time.perf_counter() - t
            t = time.perf_counter()
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            spent["pool + norm"] += time.perf_counter() - t
        took = time.perf_counter() - started
        parts = ", ".join(f"{k} {v / took:.0%}" for k, v in spent.items())
        print(f"batch {size:4}: {n / took:7,.0f} records/s ({parts})")


if __name__ == "__main__":
    main()
