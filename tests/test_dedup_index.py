"""The batched duplicate index: the vectorised MinHash, the in-memory LSH bands and the batch-at-a-time checks
give the same answers as the one-record-at-a-time definitions, across batches, processes and refilters."""

import json
import random
import sqlite3
import time
import zlib

import numpy as np
import pytest

from iceburg_daemon.config import load_config
from iceburg_daemon.ingest import ingest_paths
from iceburg_daemon.quality import bands as bands_module
from iceburg_daemon.quality.bands import BandIndex
from iceburg_daemon.quality.chain import FilterChain
from iceburg_daemon.quality.dedup import TEMPLATE_PERMS, TEMPLATE_SHINGLE, template_sketches, topic_words
from iceburg_daemon.quality.heuristics import STOP_WORDS
from iceburg_daemon.quality.minhash import _A, _B, _SHINGLE_MIX, band_keys, shingle_hashes, signatures
from iceburg_daemon.quality.text import words
from iceburg_daemon.quality.vocab import encode
from iceburg_daemon.store import Store
from iceburg_daemon.store.schema import MIGRATIONS
from iceburg_daemon.testing import chat_record, mixed_corpus, write_config, write_jsonl

M64 = (1 << 64) - 1


def _signature_by_definition(tokens, n, perms):
    """One text, plain Python ints: word n-gram hashes, then the minimum of each multiply-shift hash."""
    wh = [zlib.crc32(t.encode("utf-8")) for t in tokens]
    mix = [int(m) for m in _SHINGLE_MIX]
    if not wh:
        return [0xFFFFFFFF] * perms
    spans = [wh] if len(wh) < n else [wh[i:i + n] for i in range(len(wh) - n + 1)]
    shingles = [sum(h * m for h, m in zip(span, mix)) & M64 & 0xFFFFFFFF for span in spans]
    return [min(((int(_A[p]) * s + int(_B[p])) & M64) >> 32 for s in shingles) for p in range(perms)]


def test_batched_minhash_matches_the_definition_text_by_text():
    rng = random.Random(5)
    vocab = [f"w{i}" for i in range(300)]
    texts = [[], ["one"], ["two", "words"], ["a", "b", "c", "d"]]  # empty and shorter than the shingle
    texts += [[rng.choice(vocab) for _ in range(rng.randint(5, 400))] for _ in range(60)]
    for n, perms in ((5, 64), (4, 32)):
        enc = encode(texts)
        got = signatures(*shingle_hashes(enc.hashes, enc.sizes, n), perms, chunk=256)  # small chunks: many groups
        for tokens, sig in zip(texts, got, strict=True):
            assert sig.tolist() == _signature_by_definition(tokens, n, perms)


def test_template_sketch_is_the_minhash_of_the_skeleton_by_definition():
    """The vectorised skeleton (topic words and numbers masked by id) equals masking word by word: the prompt's
    content words become "§", all-digit words "#", everything else stays; topics never leak across records."""
    rng = random.Random(9)
    vocab = ["the", "of", "and", "cats", "dogs", "rain", "12", "2026", "x1", "sky", "blue", "go", "running"]
    prompts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(0, 6))) for _ in range(80)]
    answers = [[rng.choice(vocab) for _ in range(rng.randint(0, 40))] for _ in range(80)]
    enc_answers, enc_topics = encode(answers + [topic_words(p) for p in prompts]).split(len(answers))
    got = template_sketches(enc_answers, enc_topics)
    masked_somewhere = 0
    for prompt, tokens, (_, sig) in zip(prompts, answers, got, strict=True):
        topic = {w for w in words(prompt) if len(w) > 2 and w not in STOP_WORDS}
        skeleton = ["§" if w in topic else "#" if w.isdecimal() else w for w in tokens]
        masked_somewhere += "§" in skeleton
        assert sig.tolist() == _signature_by_definition(skeleton, TEMPLATE_SHINGLE, TEMPLATE_PERMS)
    assert masked_somewhere > 20  # the test exercises the topic mask, not only numbers


def test_band_keys_mix_the_band_number_into_each_band():
    sigs = np.random.default_rng(0).integers(0, 2**32, size=(20, 64), dtype=np.uint64)
    keys = band_keys(sigs, 16)
    assert keys.shape == (20, 16) and int(keys.max()) < 2**63
    same = sigs.copy()
    same[:, 4:] = 0  # only band 0 (hashes 0-3) kept
    assert (band_keys(same, 16)[:, 0] == keys[:, 0]).all()
    twin = np.tile(sigs[:1, :4], (1, 16))  # the same four values in every band still give 16 different keys
    assert len(set(band_keys(twin, 16)[0].tolist())) == 16


def test_band_index_finds_what_a_dict_finds_before_and_after_merging(monkeypatch):
    monkeypatch.setattr(bands_module, "MERGE_AFTER", 8)
    rng = random.Random(2)
    index, reference = BandIndex(), {}
    pools = [[rng.getrandbits(63) for _ in range(8)] for _ in range(4)]  # few keys per band: many records share each
    next_id, merged = 1, 0
    for _ in range(40):  # batches of 1-4 records, 5 bands each; crosses MERGE_AFTER several times
        rows = [[rng.choice(pool) for pool in pools] + [rng.getrandbits(63)] for _ in range(rng.randint(1, 4))]
        ids = list(range(next_id, next_id + len(rows)))
        next_id += len(rows)
        before = sum(map(len, index.large))
        index.add(np.array(rows, dtype=np.uint64), np.array(ids))
        merged += sum(map(len, index.large)) > before
        for record_id, row in zip(ids, rows, strict=True):
            for k in row:
                reference.setdefault(k, []).append(record_id)
        query = np.array([[rng.choice(pool) for pool in pools] + [rows[-1][-1]],
                          [rng.choice(pool) for pool in pools] + [rng.getrandbits(63)]], dtype=np.uint64)
        found = index.lookup(query)
        wanted = {int(k): reference[int(k)] for k in query.ravel() if int(k) in reference}
        assert {k: sorted(v) for k, v in found.items()} == {k: sorted(v) for k, v in wanted.items()}
        assert all(v == sorted(v) for v in found.values())  # oldest first within each array
    assert merged >= 3 and index.max_id == next_id - 1 and len(index) == sum(map(len, reference.values()))
    assert index.lookup(query, limit=1) and all(len(v) <= 2 for v in index.lookup(query, limit=1).values())


def test_band_index_keeps_32_bits_of_a_key_and_its_band_apart():
    """Keys are told apart by their top 32 bits within a band; the same key in another band is another entry."""
    index = BandIndex()
    a, b = 0x1234_5678 << 31, (0x1234_5678 << 31) | 0x7FFF_FFFF  # the same top 32 bits
    c, d = 5 << 40, 9 << 40
    index.add(np.array([[a, c], [d, a]], dtype=np.uint64), np.array([1, 2]))
    assert index.lookup(np.array([[b, d]], dtype=np.uint64)) == {b: [1]}  # band 0 only: record 2 has a in band 1
    assert index.lookup(np.array([[c, a]], dtype=np.uint64)) == {a: [2]}
    assert index.nbytes() == 4 * 8


def test_the_most_similar_candidate_wins_and_ties_go_to_the_oldest(cfg):
    from iceburg_daemon.quality.dedup import NEAR_BANDS, NEAR_INDEX, DuplicateIndex

    store = Store.open(cfg.db_path)
    rng = np.random.default_rng(3)
    base = rng.integers(0, 2**32, size=64, dtype=np.uint64)
    far = base.copy()
    far[8:] = rng.integers(0, 2**32, size=56, dtype=np.uint64)  # shares bands 0-1 only: 8/64 similar
    rows = [(NEAR_INDEX, 1, None, far), (NEAR_INDEX, 2, None, base), (NEAR_INDEX, 3, None, base.copy())]
    with store.transaction():
        store.add_lsh_signatures([(i, r, c, sig.astype(np.uint32).tobytes()) for i, r, c, sig in rows])
    query = base.copy()
    query[63] ^= np.uint64(1)  # one hash differs: 63/64
    keys = band_keys(query[None, :], NEAR_BANDS)[0].tolist()
    index = DuplicateIndex(store, cfg.quality)
    index.load(store.generation(), [], [(10, (keys, query))], [])
    finding, best = index.check_near(10, (keys, query))
    assert (finding.duplicate_of, best) == (2, 63 / 64)  # not 1 (less similar), not 3 (as similar, but newer)
    store.close()


def _verdicts(tmp_path, batch_size, records):
    cfg = load_config(write_config(tmp_path / f"home{batch_size}", f"[quality]\nbatch_size = {batch_size}\n"),
                      env={})
    store = Store.open(cfg.db_path)
    ingest_paths(cfg, store, [write_jsonl(tmp_path / f"c{batch_size}.jsonl", records)])
    FilterChain(cfg, store, clock=lambda: 0.0).run()
    rows = store.conn.execute("SELECT record_id, verdict, filter, reason, detail, score, duplicate_of, cluster_id,"
                              " scores FROM verdicts WHERE current = 1 ORDER BY record_id").fetchall()
    store.close()
    return [tuple(r) for r in rows]


def test_verdicts_do_not_depend_on_the_batch_size(tmp_path):
    records = mixed_corpus(11)
    one_by_one, batched = _verdicts(tmp_path, 1, records), _verdicts(tmp_path, 500, records)
    assert one_by_one == batched
    reasons = {r[3] for r in batched}
    assert {"near_duplicate", "exact_duplicate", "template", None} <= reasons


def _chain(tmp_path):
    cfg = load_config(write_config(tmp_path / "home"), env={})
    return cfg, Store.open(cfg.db_path)


def _judge(cfg, store, chain, records, name):
    before = store.conn.execute("SELECT COALESCE(MAX(id), 0) FROM records").fetchone()[0]
    ingest_paths(cfg, store, [write_jsonl(cfg.data_dir.parent / name, records)])
    chain.run()
    return store.conn.execute("SELECT v.reason, v.duplicate_of FROM verdicts v WHERE v.current = 1 AND"
                              " v.record_id > ? ORDER BY v.record_id", (before,)).fetchall()


def _near_copy(record):
    copy = json.loads(json.dumps(record))
    copy["messages"][-1]["content"] = copy["messages"][-1]["content"].replace(" the ", " this ", 1)
    copy["messages"][0]["content"] += " Once more."
    return copy


def test_another_process_adding_rows_is_seen_before_the_next_batch(tmp_path):
    cfg, store = _chain(tmp_path)
    other = Store.open(cfg.db_path)  # a second connection: what another iceburgd process would write
    a, b = FilterChain(cfg, store, clock=time.time), FilterChain(cfg, other, clock=time.time)
    first, second = chat_record(1, answer_bytes=900, seed=3), chat_record(2, answer_bytes=900, seed=3)
    assert [r[0] for r in _judge(cfg, store, a, [first], "1.jsonl")] == [None]
    assert [r[0] for r in _judge(cfg, other, b, [second], "2.jsonl")] == [None]
    got = _judge(cfg, store, a, [_near_copy(first), _near_copy(second)], "3.jsonl")
    assert [r[0] for r in got] == ["near_duplicate", "near_duplicate"]
    assert [r[1] for r in got] == [1, 2]
    other.close()
    store.close()


def test_refilter_in_the_same_process_starts_the_bands_afresh(tmp_path):
    cfg, store = _chain(tmp_path)
    chain = FilterChain(cfg, store, clock=time.time)
    record = chat_record(1, answer_bytes=900, seed=4)
    assert [r[0] for r in _judge(cfg, store, chain, [record, _near_copy(record)], "1.jsonl")] == [
        None, "near_duplicate"]
    with store.transaction():
        store.start_new_generation()
    chain.run()
    rows = store.conn.execute("SELECT reason, duplicate_of FROM verdicts WHERE current = 1 ORDER BY record_id")
    assert [tuple(r) for r in rows] == [(None, None), ("near_duplicate", 1)]  # not a duplicate of itself
    store.close()


def _downgrade_to_v3(db_path):
    """Undo every migration after v3: drop the tables and runs columns that v3 did not have."""
    from iceburg_daemon.store.schema import MIGRATIONS

    v3 = sqlite3.connect(":memory:")
    v3.executescript("".join(MIGRATIONS[:3]))
    tables = {r[0] for r in v3.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    columns = {t: {r[1] for r in v3.execute(f"PRAGMA table_info({t})")} for t in tables}
    conn = sqlite3.connect(db_path)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
        if name not in tables:
            conn.execute(f"DROP TABLE {name}")
    indexes = {r[0] for r in v3.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL").fetchall():
        if name not in indexes:
            conn.execute(f"DROP INDEX {name}")  # a later index on a column dropped below
    for table in tables:
        for column in [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]:
            if column not in columns[table]:
                conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()


def test_v3_stores_lose_the_band_table_and_keep_finding_duplicates(tmp_path):
    cfg, store = _chain(tmp_path)
    chain = FilterChain(cfg, store, clock=time.time)
    record = chat_record(1, answer_bytes=900, seed=6)
    _judge(cfg, store, chain, [record], "1.jsonl")
    store.close()
    _downgrade_to_v3(cfg.db_path)  # as an older iceburgd left it
    conn = sqlite3.connect(cfg.db_path)
    conn.executescript("CREATE TABLE lsh_bands (idx INTEGER NOT NULL, key INTEGER NOT NULL, record_id INTEGER"
                       " NOT NULL); CREATE INDEX lsh_bands_key ON lsh_bands(idx, key);")
    conn.close()
    store = Store.open(cfg.db_path)
    assert store.schema_version() == len(MIGRATIONS)
    assert not store.conn.execute("SELECT name FROM sqlite_master WHERE name LIKE 'lsh_bands%'").fetchall()
    got = _judge(cfg, store, FilterChain(cfg, store, clock=time.time), [_near_copy(record)], "2.jsonl")
    assert [tuple(r) for r in got] == [("near_duplicate", 1)]
    store.close()


@pytest.mark.parametrize("text", ["plain words, digits 42 and_underscores", "tabs\tand\x1cfile\x1fseparators!",
                                  "Ünïcode façade — naïve", "  \n\n  ", "###...", "日本語のテキスト"])
def test_fast_text_measures_match_their_regex_definitions(text):
    from iceburg_daemon.quality.heuristics import NOT_LETTER, _letters_and_visible
    from iceburg_daemon.quality.text import _PUNCT, _SPACE, WORD, normalise, words

    assert _letters_and_visible(text) == (len(NOT_LETTER.sub("", text)), len("".join(text.split())))
    folded = text.lower() if text.isascii() else __import__("unicodedata").normalize("NFKC", text).casefold()
    assert normalise(text) == _SPACE.sub(" ", _PUNCT.sub(" ", folded)).strip()
    assert words(text) == WORD.findall(text.casefold())


def test_a_long_lived_chain_sees_new_records_and_a_refilter_made_elsewhere(tmp_path):
    cfg, store = _chain(tmp_path)
    chain = FilterChain(cfg, store, clock=time.time)  # as in the daemon: one chain, many runs
    records = [chat_record(i, answer_bytes=600, seed=8) for i in range(6)]
    _judge(cfg, store, chain, records[:3], "1.jsonl")
    assert chain.run() == {}  # nothing pending: nothing judged
    other = Store.open(cfg.db_path)  # another process stores records, then refilters
    ingest_paths(cfg, other, [write_jsonl(tmp_path / "2.jsonl", records[3:])])
    assert sum(chain.run().values()) == 3
    with other.transaction():
        other.start_new_generation()
    assert sum(chain.run().values()) == 6
    assert store.conn.execute("SELECT COUNT(*) FROM verdicts WHERE current = 1 AND generation = 2").fetchone()[0] == 6
    other.close()
    store.close()


def test_word_tables_stay_right_across_growth_and_clearing(monkeypatch):
    """Each word's hash, length and number flag, read from the per-id tables, equal the word's own, while the
    tables grow past their capacity and after the memo is cleared (ids are then reused for other words)."""
    from iceburg_daemon.quality import vocab as vocab_module

    monkeypatch.setattr(vocab_module, "LIMIT", 1500)
    monkeypatch.setattr(vocab_module, "VOCAB", vocab_module.Vocab())
    rng = random.Random(4)
    for round_no in range(12):  # ~400 new words a round: grows past 1024 rows, cleared past 1,500 words
        texts = [[rng.choice([f"w{round_no}x{rng.randrange(400)}", str(rng.randrange(99)), "the", "é"])
                  for _ in range(rng.randint(0, 30))] for _ in range(40)]
        enc = vocab_module.encode(texts)
        flat = [t for text in texts for t in text]
        assert enc.hashes.tolist() == [zlib.crc32(t.encode("utf-8")) for t in flat]
        assert enc.lengths.tolist() == [len(t) for t in flat] and enc.numbers.tolist() == [t.isdecimal() for t in flat]
        assert enc.sizes.tolist() == [len(t) for t in texts] and int(enc.ids.max(initial=0)) < enc.distinct
    assert len(vocab_module.VOCAB) < 1500 + 500  # it was cleared
