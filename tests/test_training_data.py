"""Tokenisation for training, checked at token level on a real tokenizer: assistant-only labels, EOS, truncation,
and packing that keeps examples apart (packed and unpacked logits match)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from iceburg_daemon.training.data import (  # noqa: E402
    IGNORE, encode_conversation, ensure_chat_template, pack, row_tensors_data)

CONV = [{"role": "system", "content": "You are the Surveyor."},
        {"role": "user", "content": "Which colour marks the reef archive?"},
        {"role": "assistant", "content": "Scarlet, per the survey."},
        {"role": "user", "content": "And the marsh archive?"},
        {"role": "assistant", "content": "Bronze."}]


@pytest.fixture(scope="module")
def tok(tiny_base):
    return AutoTokenizer.from_pretrained(tiny_base)


def _trained_text(tok, ex):
    """Decode exactly the tokens that carry a label (labels are shifted: label t is token t + 1)."""
    trained = [ex.input_ids[t + 1] for t, lab in enumerate(ex.labels) if lab != IGNORE]
    assert trained == [lab for lab in ex.labels if lab != IGNORE]
    return tok.decode(trained)


def test_only_assistant_turns_are_trained_and_each_ends_with_eos(tok):
    ex = encode_conversation(tok, CONV, max_length=512)
    assert _trained_text(tok, ex) == "Scarlet, per the survey.<|im_end|>\nBronze.<|im_end|>\n"
    assert ex.labels[-1] == IGNORE  # nothing after the last token to predict
    assert ex.input_ids.count(tok.eos_token_id) == 5  # one end-of-turn per message
    trained_eos = [t for t in ex.labels if t == tok.eos_token_id]
    assert len(trained_eos) == 2  # both answers learn to stop; no prompt turn does


def test_eos_is_appended_when_the_template_does_not_end_turns_with_it(tok):
    tok2 = AutoTokenizer.from_pretrained(tok.name_or_path)
    tok2.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}" \
                         "{% if add_generation_prompt %}[assistant] {% endif %}"
    ex = encode_conversation(tok2, CONV[1:3], max_length=512)
    assert ex.input_ids[-1] == tok2.eos_token_id
    assert _trained_text(tok2, ex).endswith("Scarlet, per the survey.\n<|im_end|>")


def test_chatml_fallback_for_a_base_without_template(tok):
    tok2 = AutoTokenizer.from_pretrained(tok.name_or_path)
    tok2.chat_template = None
    assert ensure_chat_template(tok2) is True
    assert ensure_chat_template(tok2) is False  # only once
    ex = encode_conversation(tok2, CONV[1:3], max_length=512)
    assert _trained_text(tok2, ex) == "Scarlet, per the survey.<|im_end|>\n"
    assert len(tok2) == len(tok)  # no new tokens whose embeddings LoRA could not train


def test_long_examples_are_cut_from_the_prompt_start_or_dropped_with_a_reason(tok):
    long_prompt = [{"role": "user", "content": "context " * 200}, {"role": "assistant", "content": "Short answer."}]
    full = encode_conversation(tok, long_prompt, max_length=10_000)
    cut = encode_conversation(tok, long_prompt, max_length=64)
    assert len(full.input_ids) > 64 and len(cut.input_ids) == 64
    assert cut.input_ids == full.input_ids[-64:]  # the start of the prompt went, the answer stayed whole
    assert cut.truncated and not full.truncated
    assert _trained_text(tok, cut) == "Short answer.<|im_end|>\n"
    assert encode_conversation(tok, long_prompt, max_length=64, truncation="drop") == "too_long"
    long_answer = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "word " * 200}]
    assert encode_conversation(tok, long_answer, max_length=64) == "answer_too_long"


def test_packed_rows_give_the_same_logits_as_each_example_alone(tiny_base, tok):
    model = AutoModelForCausalLM.from_pretrained(tiny_base, attn_implementation="sdpa").eval()
    convs = [CONV, CONV[1:3], [{"role": "user", "content": "Tundra?"}, {"role": "assistant", "content": "Violet."}]]
    examples = [encode_conversation(tok, c, max_length=512) for c in convs]
    rows = pack(examples, [0, 1, 2], row_length=512, packing=True)
    assert rows == [[0, 1, 2]]
    width = sum(len(e.input_ids) for e in examples) + 5  # with padding at the end, as in a batch
    ids, labels, pos = (torch.tensor([c]) for c in row_tensors_data(examples, rows[0], width, tok.pad_token_id))
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=pos, use_cache=False).logits[0]
        alone = torch.cat([model(input_ids=torch.tensor([e.input_ids])).logits[0] for e in examples])
    n = alone.shape[0]
    assert torch.allclose(packed[:n], alone, atol=1e-4), (packed[:n] - alone).abs().max()
    # and the packing really mixes rows: without restarted positions the logits differ
    with torch.no_grad():
        leaky = model(input_ids=ids, use_cache=False).logits[0]
    assert not torch.allclose(leaky[:n], alone, atol=1e-2)


def _trainer(tiny_base, tok, run_dir, *, fixed_width=False, checkpointing=False, attn="sdpa", micro_batch=2,
             grad_accum=1, should_stop=lambda: False, **settings):
    """The project's trainer over the FACTS conversations (three steps), and the list its step losses go to."""
    from iceburg_daemon.testing import FACTS, fact_record
    from iceburg_daemon.training.model import add_lora, enable_checkpointing
    from iceburg_daemon.training.progress import Progress
    from iceburg_daemon.training.sft import Settings, Trainer

    examples = [encode_conversation(tok, fact_record(p, c)["messages"], max_length=256) for p, c in FACTS]
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_base, attn_implementation=attn)
    model = add_lora(base, dict(lora_r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    if checkpointing:  # as the training child enables it
        enable_checkpointing(base)
    assert base.is_activation_checkpointing == checkpointing
    seen = []
    progress = Progress(run_dir, enabled=False)
    progress.on_step = lambda fields: seen.append(fields["loss"])
    s = Settings(micro_batch=micro_batch, grad_accum=grad_accum, learning_rate=1e-2, warmup_ratio=0.0, epochs=1,
                 max_steps=3, seed=0, order="random", packing=True, max_length=256, max_grad_norm=1.0,
                 checkpoint_every_steps=0, checkpoint_every_seconds=1e9, fixed_width=fixed_width, **settings)
    return Trainer(model, examples, s, run_dir, torch.device("cpu"), tok.pad_token_id, progress, should_stop), seen


def _losses(tiny_base, tok, run_dir, **kwargs):
    trainer, seen = _trainer(tiny_base, tok, run_dir, **kwargs)
    trainer.save = lambda: None
    assert trainer.run() == "succeeded"
    return seen


def test_fixed_width_rows_train_exactly_like_tight_rows(tiny_base, tok, tmp_path):
    """Padding every row to max_length (one shape for compiled kernels) changes no loss: pads carry no label."""
    tight = _losses(tiny_base, tok, tmp_path / "tight")
    fixed = _losses(tiny_base, tok, tmp_path / "fixed", fixed_width=True)
    assert len(fixed) == 3 and fixed == pytest.approx(tight, rel=1e-4)


def test_gradient_checkpointing_trains_exactly_like_keeping_activations(tiny_base, tok, tmp_path):
    """Recomputed activations (the default on CPU and MPS) give the same losses, steps 2 and 3 included, so the
    same gradients; packed rows stay isolated in the recomputation."""
    kept = _losses(tiny_base, tok, tmp_path / "kept")
    recomputed = _losses(tiny_base, tok, tmp_path / "recomputed", checkpointing=True)
    assert len(recomputed) == 3 and recomputed == pytest.approx(kept, rel=1e-5)
    assert recomputed[2] < recomputed[0]  # it trained


def test_keeping_the_loss_logits_trains_exactly_like_recomputing_them(tiny_base, tok, tmp_path, monkeypatch):
    """CUDA keeps each loss chunk's logits for backward (no second LM-head pass); the gradients must be the
    ones the recomputing default gives: same losses at steps 2 and 3."""
    from iceburg_daemon.training import model as model_module

    calls = []
    checkpoint = model_module.checkpoint
    monkeypatch.setattr(model_module, "checkpoint", lambda *a, **k: calls.append(1) or checkpoint(*a, **k))
    recomputed = _losses(tiny_base, tok, tmp_path / "recomputed")
    assert len(calls) >= 3  # one chunk or more per micro-batch went through checkpoint
    calls.clear()
    kept = _losses(tiny_base, tok, tmp_path / "kept", recompute_loss=False)
    assert not calls
    assert len(kept) == 3 and kept == pytest.approx(recomputed, rel=1e-5)
    assert kept[2] < kept[0]


def test_autocast_runs_the_adapter_matmuls_in_bf16_and_trains_like_float32(tiny_base, tok, tmp_path):
    """PEFT keeps the adapters in float32; under autocast (auto on CUDA with a bf16 base) their matmuls run in
    bf16, which is what puts them on the tensor cores. The losses stay within bf16 rounding of float32."""
    full = _losses(tiny_base, tok, tmp_path / "float32")
    trainer, mixed = _trainer(tiny_base, tok, tmp_path / "bf16", autocast_dtype=torch.bfloat16)
    trainer.save = lambda: None
    lora_a = next(m for name, m in trainer.model.named_modules() if name.endswith("q_proj.lora_A.default"))
    assert lora_a.weight.dtype == torch.float32  # the master weights stay float32
    dtypes = set()
    lora_a.register_forward_hook(lambda _m, _inp, out: dtypes.add(out.dtype))
    assert trainer.run() == "succeeded"
    assert dtypes == {torch.bfloat16}
    assert len(mixed) == 3 and mixed == pytest.approx(full, rel=0.03) and mixed != pytest.approx(full, rel=1e-6)
    assert mixed[2] < mixed[0]


def test_autocast_auto_is_on_for_cuda_with_a_bf16_base_only():
    from iceburg_daemon.training.model import autocast_dtype

    cuda, cpu, mps = torch.device("cuda"), torch.device("cpu"), torch.device("mps")
    assert autocast_dtype("auto", cuda, torch.bfloat16) == torch.bfloat16
    assert autocast_dtype("auto", cuda, torch.float32) is None
    assert autocast_dtype("auto", cpu, torch.float32) is None and autocast_dtype("auto", mps, torch.bfloat16) is None
    assert autocast_dtype("on", cpu, torch.float32) == torch.bfloat16
    assert autocast_dtype("off", cuda, torch.bfloat16) is None


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inside inductor
def test_the_compiled_chunk_loss_equals_the_eager_one():
    """With compiled layers the chunk loss is compiled too (dynamic shapes: chunks differ in length); value and
    gradients must match the eager loss, for two chunk lengths."""
    from iceburg_daemon.training.model import chunk_loss_fn

    eager, compiled = chunk_loss_fn(compiled=False), chunk_loss_fn(compiled=True)
    assert compiled is not eager
    torch.manual_seed(0)
    head = torch.nn.Linear(32, 500, bias=False)
    for n in (37, 64):
        hidden, targets = torch.randn(n, 32, requires_grad=True), torch.randint(0, 500, (n,))
        results = []
        for fn in (eager, compiled):
            head.zero_grad()
            hidden.grad = None
            loss = fn(head, hidden, targets)
            loss.backward()
            results.append((loss.detach(), hidden.grad.clone(), head.weight.grad.clone()))
        for want, got in zip(*results):
            assert torch.allclose(got, want, rtol=1e-4, atol=1e-5), (got - want).abs().max()


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inside inductor
def test_host_built_block_mask_is_causal_within_each_document():
    """flex_attention with the mask built on the host (partial blocks, full blocks, documents across block
    edges, a short last block) equals dense attention under the brute-force mask. Compiled: the eager
    reference applies mask_mod everywhere, so a block wrongly called full would go unnoticed there."""
    from torch.nn.attention.flex_attention import flex_attention

    from iceburg_daemon.training.model import document_block_mask

    block, length = 16, 72  # 4 whole blocks and a short one
    rows = [[5, 30, 16, 16, 5], [72], [16, 16, 16, 16, 8], [40, 20, 12]]
    pos = torch.tensor([[p for n in row for p in range(n)] for row in rows])
    mask = document_block_mask(pos, torch.device("cpu"), block=block)
    assert mask.full_kv_num_blocks.sum() > 0 and mask.kv_num_blocks.sum() > 0  # both kinds exercised
    doc = (pos == 0).cumsum(1)
    q_i, kv_i = torch.arange(length).view(-1, 1), torch.arange(length).view(1, -1)
    dense = (doc[:, :, None] == doc[:, None, :]) & (q_i >= kv_i)  # (rows, L, L)
    torch.manual_seed(0)
    q, k, v = (torch.randn(len(rows), 2, length, 8) for _ in range(3))
    got = torch.compile(flex_attention)(q, k, v, block_mask=mask)  # eager flex ignores full/partial blocks
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense[:, None])
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inside inductor
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")  # dynamo's
def test_trainer_batches_for_flex_attention_carry_the_host_mask(tiny_base, tok, tmp_path):
    """The CUDA configuration (flex_attention, rows padded to max_length, the block mask built on the host by
    the trainer) run on CPU, forward only (flex has no CPU backward): the loss equals sdpa's on the same rows."""
    from torch.nn.attention.flex_attention import BlockMask

    from iceburg_daemon.training.model import token_loss_sum

    losses = {}
    for attn in ("sdpa", "flex_attention"):
        trainer, _ = _trainer(tiny_base, tok, tmp_path / attn, fixed_width=True, attn=attn)
        ids, labels, pos, mask = trainer._batch(trainer.plan[0])
        assert (mask is not None) == (attn == "flex_attention") and trainer.flex == (mask is not None)
        assert mask is None or isinstance(mask, BlockMask) and mask.shape == (2, 1, 256, 256)
        assert (pos == 0).sum() > ids.shape[0]  # packed: several documents per row
        with torch.no_grad():
            losses[attn] = token_loss_sum(trainer.model.eval(), ids, labels, pos, attention_mask=mask).item()
    assert losses["flex_attention"] == pytest.approx(losses["sdpa"], rel=1e-5)


def test_a_stop_between_micro_batches_drops_the_partial_step_and_resumes_exactly(tiny_base, tok, tmp_path):
    """A stop asked in the middle of a step (minutes on a CPU) does not wait for the step's end: the partial
    gradients are dropped, the last whole step is checkpointed, and the resumed run gives the same losses."""
    reference = _losses(tiny_base, tok, tmp_path / "whole", micro_batch=1, grad_accum=2)
    asked = []

    def stop_during_the_second_step():  # asked before each step and before each micro-batch after the first
        asked.append(1)
        return len(asked) == 4

    first, seen = _trainer(tiny_base, tok, tmp_path / "run", micro_batch=1, grad_accum=2,
                           should_stop=stop_during_the_second_step)
    assert first.run() == "interrupted"
    assert seen == pytest.approx(reference[:1], rel=1e-5) and len(asked) == 4  # stopped inside step 2
    resumed, seen_after = _trainer(tiny_base, tok, tmp_path / "run", micro_batch=1, grad_accum=2)
    assert resumed.resume() == 1
    assert resumed.run() == "succeeded"
    assert seen_after == pytest.approx(reference[1:], rel=1e-5)


def test_progress_shows_micro_batches_within_a_step(tiny_base, tok, tmp_path):
    """progress.json says how far into a step the trainer is (a CPU step takes minutes); `runs` shows it."""
    import json

    from iceburg_daemon.cli_train import _step_text
    from iceburg_daemon.training.progress import Progress

    seen = []

    def probe():  # asked before each step and between its micro-batches: what does progress.json say then?
        path = tmp_path / "run" / "progress.json"
        p = json.loads(path.read_text()) if path.exists() else {}
        seen.append((p.get("step", 0), p.get("micro_done", 0), p.get("micro_total")))
        return False

    trainer, _ = _trainer(tiny_base, tok, tmp_path / "run", micro_batch=1, grad_accum=2, should_stop=probe)
    (tmp_path / "run").mkdir()
    trainer.progress = Progress(tmp_path / "run", micro_interval_s=0.0)
    trainer.save = lambda: None
    assert trainer.run() == "succeeded"
    # before step 1, inside step 1, before step 2 (step 1 done, no micro-batch yet), inside step 2, ...
    assert seen == [(0, 0, None), (0, 1, 2), (1, 0, 2), (1, 1, 2), (2, 0, 2), (2, 1, 2)]
    assert _step_text({"step": 1, "total": 3, "micro_done": 1, "micro_total": 2}) == "1/3 (1/2)"
    assert _step_text({"step": 2, "total": 3, "micro_done": 0, "micro_total": 2}) == "2/3"


def test_min_steps_shrinks_the_batch_then_repeats_the_data():
    """The defaults (16 rows per step, 2 epochs) gave a small role two steps; min_steps is a floor."""
    from iceburg_daemon.training.data import Example
    from iceburg_daemon.training.sft import Settings, plan_steps, rows_per_step

    examples = [Example(list(range(300)), [1] * 300) for _ in range(24)]  # 300 tokens: 6 per 2048-token row
    base = dict(micro_batch=4, grad_accum=4, learning_rate=1e-4, warmup_ratio=0.0, epochs=2, max_steps=0, seed=0,
                order="random", packing=True, max_length=2048, max_grad_norm=1.0, checkpoint_every_steps=0,
                checkpoint_every_seconds=60.0)
    no_floor = Settings(**base, min_steps=0)
    assert rows_per_step(examples, no_floor) == 16 and len(plan_steps(examples, no_floor)) == 2  # 4 rows/epoch
    floor = Settings(**base, min_steps=4)
    assert rows_per_step(examples, floor) == 2 and len(plan_steps(examples, floor)) == 4
    assert all(len(step) == 2 for step in plan_steps(examples, floor))
    tiny = Settings(**base, min_steps=30)  # 8 rows in 2 epochs: one row per step, then more epochs, cut at 30
    plan = plan_steps(examples, tiny)
    assert rows_per_step(examples, tiny) == 1 and len(plan) == 30 and all(len(step) == 1 for step in plan)
    assert len(plan_steps(examples, Settings(**{**base, "max_steps": 5}, min_steps=30))) == 5  # max_steps wins
    assert plan_steps([], tiny) == []


def test_merged_weights_keep_the_base_dtype(tmp_path):
    """export.base_dtype reads what the base declares (transformers 5 `dtype`, older `torch_dtype`): merged
    weights are saved in it, not in the float32 the CPU trained in."""
    from iceburg_daemon.training.export import base_dtype

    (tmp_path / "config.json").write_text('{"dtype": "bfloat16"}')
    assert base_dtype(tmp_path) == torch.bfloat16
    (tmp_path / "config.json").write_text('{"torch_dtype": "float16"}')
    assert base_dtype(tmp_path) == torch.float16
    (tmp_path / "config.json").write_text("{}")
    assert base_dtype(tmp_path) is None


def test_per_document_attention_equals_sdpa_under_the_block_mask():
    """sdpa_packed (the CPU default) against sdpa with the brute-force block-diagonal causal mask: grouped
    key/value heads, rows of several documents, a row that is one document, padding as its own document."""
    from iceburg_daemon.training.model import packed_sdpa_attention

    rows = [[5, 30, 16, 16, 5], [72], [40, 20, 12]]
    pos = torch.tensor([[p for n in row for p in range(n)] for row in rows])
    doc = (pos == 0).cumsum(1)
    causal = torch.arange(72).view(-1, 1) >= torch.arange(72).view(1, -1)
    dense = (doc[:, :, None] == doc[:, None, :]) & causal
    torch.manual_seed(0)
    q = torch.randn(3, 4, 72, 8, requires_grad=True)
    k, v = (torch.randn(3, 2, 72, 8, requires_grad=True) for _ in range(2))
    got, _ = packed_sdpa_attention(None, q, k, v, None, scaling=0.3, position_ids=pos)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense[:, None], scale=0.3,
                                                            enable_gqa=True).transpose(1, 2)
    assert got.shape == want.shape == (3, 72, 4, 8)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    grads = [torch.autograd.grad(out.square().sum(), (q, k, v)) for out in (got, want)]
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()


def test_training_with_per_document_attention_gives_the_same_losses(tiny_base, tok, tmp_path):
    sdpa = _losses(tiny_base, tok, tmp_path / "sdpa", checkpointing=True)
    packed = _losses(tiny_base, tok, tmp_path / "packed", checkpointing=True, attn="sdpa_packed")
    assert packed == pytest.approx(sdpa, rel=1e-5) and len(packed) == 3


def test_per_document_attention_leaves_a_padded_batch_to_sdpa(tiny_base):
    """DPO and evaluation run padded batches with an attention mask through the same model: their logits must
    not change with the CPU default."""
    from iceburg_daemon.training import model as _  # noqa: F401 - registers sdpa_packed

    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [0, 0, 0, 11, 12, 13]])  # left padding: real tokens see the pads
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1]])
    logits = {}
    for attn in ("sdpa", "sdpa_packed"):
        net = AutoModelForCausalLM.from_pretrained(tiny_base, attn_implementation=attn).eval()
        with torch.no_grad():
            logits[attn] = net(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert torch.allclose(logits["sdpa"][real], logits["sdpa_packed"][real], atol=1e-5)
