"""Registry moves on a real store, without training: retention keeps what a rollback needs, rollback and force
refuse what they cannot do, and the champion pointer and its history move together."""

from __future__ import annotations

import json

import pytest

from iceburg_daemon.config import load_config
from iceburg_daemon.errors import RegistryError
from iceburg_daemon.promote import force, keep_set, prune, rollback
from iceburg_daemon.store import Store
from iceburg_daemon.testing import write_config


@pytest.fixture
def home(tmp_path):
    cfg = load_config(write_config(tmp_path / "home", "[registry]\nkeep_candidates = 1\n"), env={})
    store = Store.open(cfg.db_path)
    yield cfg, store
    store.close()


def _version(cfg, store, n: int, decision: str = "rejected") -> None:
    folder = cfg.models_dir / "oracle" / f"v{n}"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("{}")
    with store.transaction():
        store.add_run({"id": f"run{n}", "role": "oracle", "status": "rejected" if decision == "rejected" else
                       "published", "run_dir": str(folder), "snapshot_id": "s", "train_count": 1, "eval_count": 1,
                       "created_at": float(n)})
        store.add_version({"role": "oracle", "version": n, "run_id": f"run{n}", "decision": decision,
                           "path": str(folder), "weights": f"w{n}", "gate": json.dumps({"passed": False}),
                           "created_at": float(n)})
        if decision == "promoted":
            store.set_champion("oracle", n, action="promote", reason="gate passed", forced=False, now=float(n))


def test_retention_keeps_the_champion_the_previous_one_and_the_newest_candidates(home):
    cfg, store = home
    _version(cfg, store, 1, "promoted")
    _version(cfg, store, 2)
    _version(cfg, store, 3, "promoted")
    _version(cfg, store, 4)
    _version(cfg, store, 5)
    assert keep_set(cfg, store, "oracle") == {3, 1, 5}  # champion, what a rollback goes to, newest other
    assert prune(cfg, store, "oracle", now=10.0) == [2, 4]
    assert not (cfg.models_dir / "oracle" / "v2").exists() and (cfg.models_dir / "oracle" / "v1").exists()
    assert [v["version"] for v in store.versions("oracle") if v["pruned_at"] is not None] == [2, 4]
    assert prune(cfg, store, "oracle", now=11.0) == []  # idempotent


def test_rollback_and_force_move_the_pointer_with_history_and_refuse_the_impossible(home):
    cfg, store = home
    with pytest.raises(RegistryError, match="no champion"):
        rollback(store, "oracle", None, now=1.0)
    _version(cfg, store, 1, "promoted")
    with pytest.raises(RegistryError, match="first champion"):
        rollback(store, "oracle", None, now=2.0)
    _version(cfg, store, 2)
    with pytest.raises(RegistryError, match="needs --reason"):
        force(store, "run2", "  ", now=3.0)
    assert force(store, "run2", "the gate's suite is stale", now=3.0) == 2
    with pytest.raises(RegistryError, match="already the oracle champion"):
        force(store, "run2", "again", now=4.0)
    assert rollback(store, "oracle", None, now=5.0) == (2, 1)
    with pytest.raises(RegistryError, match="v7 is unknown"):
        rollback(store, "oracle", 7, now=6.0)
    assert store.champion("oracle")["version"] == 1
    assert [(p["action"], p["from_version"], p["to_version"], p["forced"], p["reason"])
            for p in store.promotions("oracle")] == [
        ("promote", None, 1, 0, "gate passed"), ("force", 1, 2, 1, "the gate's suite is stale"),
        ("rollback", 2, 1, 0, "rollback from v2")]
    assert store.version("oracle", 2)["decision"] == "forced"
    _version(cfg, store, 3)
    _version(cfg, store, 4)
    prune(cfg, store, "oracle", now=7.0)
    pruned = [v["version"] for v in store.versions("oracle") if v["pruned_at"] is not None]
    assert 2 in keep_set(cfg, store, "oracle") and pruned == [3]  # v2: the rollback source stays available
    with pytest.raises(RegistryError, match="pruned"):
        force(store, "run3", "too late", now=8.0)


def test_publishing_moves_the_alias_and_deletes_the_tags_of_pruned_versions(tmp_path, tiny_base):
    """Without training: the tiny base stands in for merged weights (a real model folder with a ChatML template)."""
    import shutil

    from fake_ollama import FakeOllama

    from iceburg_daemon.publish import PublishStage

    ollama = FakeOllama()
    try:
        cfg = load_config(write_config(tmp_path / "home", f'[publish]\nollama_host = "{ollama.url}"\n'), env={})
        store = Store.open(cfg.db_path)
        for n in (1, 2):
            _version(cfg, store, n, "promoted")
            shutil.copytree(tiny_base, cfg.models_dir / "oracle" / f"v{n}" / "merged")
            if n == 1:
                assert PublishStage(cfg, store).run_now() == [("oracle", True)]
                assert ollama.target("iceburg-oracle:latest") == ollama.target("iceburg-oracle:v1") is not None
        assert [j.version for j in PublishStage(cfg, store).due()] == [2]
        with store.transaction():
            store.update_version("oracle", 1, pruned_at=3.0)  # retention removed v1's files
        assert PublishStage(cfg, store).run_now("oracle") == [("oracle", True)]
        assert "iceburg-oracle:v1" not in ollama.models and ("DELETE", "/api/delete") in ollama.requests
        assert ollama.target("iceburg-oracle:latest") == ollama.target("iceburg-oracle:v2")
        assert store.version("oracle", 1)["published_at"] is None and store.version("oracle", 2)["published_at"]
        champ = store.champion("oracle")
        assert (champ["alias_version"], champ["publish_failures"], champ["publish_error"]) == (2, 0, None)
        assert PublishStage(cfg, store).due() == []  # alias and champion agree: nothing more to do
        store.close()
    finally:
        ollama.close()
