"""The architecture rules that can be checked statically: one module owns each outside system."""

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "iceburg_daemon"
IMPORT = re.compile(r"^\s*(?:from|import)\s+(chromadb|faiss|torch|transformers|peft|trl)\b", re.MULTILINE)


def _importers(name):
    return sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                  if any(m == name for m in IMPORT.findall(p.read_text(encoding="utf-8"))))


def test_only_chroma_py_imports_chromadb():
    assert _importers("chromadb") == ["chroma.py"]


def test_only_vector_index_py_imports_faiss():
    assert _importers("faiss") == ["vector_index.py"]


def test_only_the_training_package_may_import_the_training_stack():
    for name in ("torch", "transformers", "peft", "trl"):
        assert all(path.startswith("training/") for path in _importers(name)), name


def test_only_ollama_py_talks_to_ollama():
    """Its HTTP API (blobs, create, copy, chat, embed...) is spoken in one module; the others call it."""
    speakers = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                      if re.search(r"[\"']/api/(?:embed|chat|create|copy|tags|show|delete|blobs)", p.read_text()))
    assert speakers == ["ollama.py"]


def test_every_third_party_import_is_declared_in_pyproject():
    """A package imported by the code but installed only as someone else's dependency breaks on a new install."""
    import sys
    import tomllib

    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=\[ ;]", d, maxsplit=1)[0].lower().replace("-", "_")
                for d in project["dependencies"] + [d for group in project["optional-dependencies"].values()
                                                    for d in group]}
    imported = set()
    for path in PACKAGE.rglob("*.py"):
        imported |= set(re.findall(r"^\s*(?:from|import)\s+([a-zA-Z_0-9]+)", path.read_text(), re.MULTILINE))
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m not in ("iceburg_daemon",)}
    aliases = {"prometheus_client": "prometheus_client", "yaml": "pyyaml", "faiss": "faiss_cpu"}
    missing = sorted(m for m in third_party if aliases.get(m, m).lower() not in declared)
    assert missing == []


def test_nothing_unpickles_or_runs_a_shell():
    """Only safetensors and plain tensors are loaded (torch.load with weights_only=True), no pickle, no shell."""
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)
        assert not re.search(r"^\s*import pickle|pickle\.loads?\(|shell=True", text, re.MULTILINE), path


def test_everything_listens_on_localhost_unless_configured():
    """The only listener is the metrics endpoint, on 127.0.0.1 by default; nothing binds every interface."""
    from iceburg_daemon.config import MetricsConfig

    assert MetricsConfig().host == "127.0.0.1"
    for path in PACKAGE.rglob("*.py"):
        assert "0.0.0.0" not in path.read_text(), path
        if path.name not in ("metrics.py", "testing.py"):  # testing.free_port binds port 0 for a moment, for tests
            assert not re.search(r"\b(?:start_http_server|HTTPServer|\.bind\()", path.read_text()), path
