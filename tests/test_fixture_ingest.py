"""Every file of the real ICEBURG fixtures goes through `iceburgd ingest`'s code path with an asserted outcome."""

import json
from collections import Counter
from pathlib import Path

from iceburg_daemon.ingest import ingest_paths
from iceburg_daemon.store import Store


def _outcomes(cfg, fixtures: Path):
    store = Store.open(cfg.db_path)
    files = sorted(p for p in fixtures.rglob("*") if p.is_file())
    reports = {str(Path(r["path"]).relative_to(fixtures)): r for r in ingest_paths(cfg, store, files)}
    return store, reports


def test_every_fixture_file_has_its_expected_outcome(cfg, fixtures):
    store, reports = _outcomes(cfg, fixtures)
    seen = set()

    def expect(prefix, outcome, stored=None, duplicates=None, quarantined=None, reason=None):
        matched = [k for k in reports if k.startswith(prefix)]
        assert matched, prefix
        for key in matched:
            r = reports[key]
            seen.add(key)
            assert r["outcome"] == outcome, (key, r)
            if stored is not None:
                assert r["stored"] == stored, (key, r)
            if duplicates is not None:
                assert r["duplicates"] == duplicates, (key, r)
            if quarantined is not None:
                assert r["quarantined"] == quarantined, (key, r)
            if reason is not None:
                assert r.get("reason") == reason, (key, r)

    agent = "data/fine_tuning/agent_data/"
    for role, n in {"surveyor": 26, "dissident": 16, "synthesist": 10, "oracle": 8}.items():
        expect(f"{agent}{role}_training_data.jsonl", "ingested", {f"{role}/sft": n}, 0, {})
        expect(f"{agent}large_corpus/{role}_training_data.jsonl", "ingested", {f"{role}/sft": 150}, 0, {})
        expect(f"data/training/{role}_training.jsonl", "ingested", {f"{role}/sft": 1}, 0, {})
    expect("data/telemetry/prompt_metrics.jsonl", "ingested", {"general/signal": 30}, 0, {})
    # Two sentences repeated 15 times each: two records, 28 duplicates.
    expect("data/emergent_intelligence/intelligence.jsonl", "ingested", {"general/signal": 2}, 28, {})
    # 20 rows of five stores; one gnosis document appears in two stores.
    expect("data/chroma_records_flat.jsonl", "ingested", {"general/signal": 17, "oracle/signal": 2}, 1, {})
    for name in ("data/emergent_intelligence/patterns.json", "data/gnosis/knowledge_base.json",
                 "data/hallucinations/patterns/pattern_stats.json", "data/instant_truth_cache.json",
                 "models/iceburg/model_registry.json"):
        expect(name, "ingested", {}, 0, {"unknown_format": 1})
    for key in [k for k in reports if k.startswith("models/iceburg/iceburg-") and k.endswith(".json")]:
        expect(key, "ingested", {}, 0, {"unknown_format": 1})
    # Secretary transcripts: answered rows (errors included, the filter rejects those) vs error-only rows.
    archive = "tests/archive/secretary_test_results_"
    for stamp in ("1768510934", "1768511340", "1768511591"):
        expect(f"{archive}{stamp}.json", "ingested", {"general/sft": 8}, 0, {})
    expect(f"{archive}1768510953.json", "ingested", {"general/signal": 8}, 0, {})
    expect(f"{archive}1768511007.json", "ingested", {}, 8, {})  # identical error rows to ...953
    # Everything else (Markdown, text, SQLite stores, HNSW segment files, Modelfiles) is not inbox input.
    for key in sorted(set(reports) - seen):
        expect(key, "quarantined", {}, 0, {"unsupported_type": 1}, reason="unsupported_type")
    assert len(reports) == len(list(p for p in fixtures.rglob("*") if p.is_file()))

    counts = Counter({(r["role"], r["kind"]): r["n"] for r in store.record_counts()})
    assert counts[("surveyor", "sft")] == 177 and counts[("oracle", "signal")] == 2
    assert store.integrity_ok()
    store.close()


def test_error_rows_and_null_scores_survive_as_data(cfg, fixtures):
    store, _ = _outcomes(cfg, fixtures)
    errors = [json.loads(r["canonical"]) for r in store.records("kind = 'signal' AND canonical LIKE ?",
                                                                 ("%secretary_error%",))]
    assert len(errors) == 8 and all(e["signals"]["success"] is False for e in errors)
    tele = [json.loads(r["canonical"]) for r in store.records("canonical LIKE ?", ('%"format":"telemetry"%',))]
    assert len(tele) == 30 and all(t["signals"] == {"quality_score": 1.0, "emergence_score": None, "success": True,
                                                    "error": None} for t in tele)
    secretary = [json.loads(r["canonical"]) for r in store.records("canonical LIKE ?", ('%"format":"secretary"%',))]
    assert secretary and all(s["signals"]["quality_score"] is None for s in secretary)  # unknown, never 0
    assert all(not r["canonical"].count('"kind":"sft"') for r in store.records("kind = 'signal'"))
    store.close()


def test_reingesting_the_same_paths_adds_nothing(cfg, fixtures):
    store, _ = _outcomes(cfg, fixtures)
    before = store.conn.execute("SELECT COUNT(*) FROM records").fetchone()[0]
    again = ingest_paths(cfg, store, [fixtures / "data/telemetry/prompt_metrics.jsonl"])
    assert again[0]["outcome"] == "already_ingested"
    assert store.conn.execute("SELECT COUNT(*) FROM records").fetchone()[0] == before
    store.close()
