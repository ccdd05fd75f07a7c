"""The architecture rules that can be checked statically: one module owns each outside system."""

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "iceburg_daemon"
IMPORT = re.compile(r"^\s*(?:from|import)\s+(chromadb|torch|transformers|peft|trl)\b", re.MULTILINE)


def _importers(name):
    return sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                  if any(m == name for m in IMPORT.findall(p.read_text(encoding="utf-8"))))


def test_only_chroma_py_imports_chromadb():
    assert _importers("chromadb") == ["chroma.py"]


def test_only_the_training_package_may_import_the_training_stack():
    for name in ("torch", "transformers", "peft", "trl"):
        assert all(path.startswith("training/") for path in _importers(name)), name


def test_only_ollama_py_talks_to_ollama():
    """Its HTTP API (blobs, create, copy, chat, embed...) is spoken in one module; the others call it."""
    speakers = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                      if re.search(r"[\"']/api/(?:embed|chat|create|copy|tags|show|delete|blobs)", p.read_text()))
    assert speakers == ["ollama.py"]
