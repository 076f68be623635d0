"""Built-in extractors. Import is lazy so that a stage loads only the libraries it needs."""
import importlib

_MODULES = ("vggish", "egemaps", "text", "video")


def load_all() -> None:
    for mod in _MODULES:
        try:
            importlib.import_module(f"pipeline.extractors.{mod}")
        except ModuleNotFoundError as e:  # a module not written yet, or an optional extra not installed
            if e.name and e.name.startswith("pipeline.extractors"):
                continue
            raise
