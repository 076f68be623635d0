"""Built-in extractors. Each module imports its heavy libraries inside load(), so registering them is cheap."""
import importlib

_MODULES = ("vggish", "vggish_states", "egemaps", "text", "text_states", "video")


def load_all() -> None:
    for mod in _MODULES:
        importlib.import_module(f"pipeline.extractors.{mod}")
