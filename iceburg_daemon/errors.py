"""The one exception tree: a root, then one subclass per stage boundary."""


class IceburgDaemonError(Exception):
    """Root of every error the daemon raises on purpose."""


class ConfigError(IceburgDaemonError):
    """The configuration is invalid; `problems` lists every problem found, not just the first."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems))


class StoreError(IceburgDaemonError):
    """The SQLite store cannot be opened, migrated or written."""


class AlreadyRunningError(IceburgDaemonError):
    """Another daemon holds the data directory's lock."""


class IngestError(IceburgDaemonError):
    """A file (or the rest of it) cannot be read; the file is quarantined whole with `reason`."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class SourceError(IceburgDaemonError):
    """An ICEBURG ChromaDB store could not be snapshotted or read."""


class TrainingError(IceburgDaemonError):
    """A training run cannot be prepared or started (no data, no base model, unknown run)."""


class EvaluationError(IceburgDaemonError):
    """A candidate cannot be evaluated (invalid suite, failed evaluation child, missing model files)."""


class RegistryError(IceburgDaemonError):
    """A model version cannot be registered, promoted or rolled back (unknown version, refused move)."""


class PublishError(IceburgDaemonError):
    """Ollama refused or could not be reached; `retry` says whether trying again later may help."""

    def __init__(self, message: str, *, retry: bool):
        self.retry = retry
        super().__init__(message)
