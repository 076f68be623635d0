"""The models emocache knows: where each weight file comes from, its pin, its licence, and whether it is here.

Pure data plus offline look-ups (the weights dir, the torch hub cache, the Hugging Face cache); nothing here
touches the network. `pipeline.weights_fetch` downloads entries; extractors and `doctor` use `entry_for_file`
to name the exact `emocache weights fetch` command for a missing file.

Pins: `sha256` is a full digest only where it is known from the publisher's own listing (the Git LFS oid of the
same file on the Hugging Face hub) or from a verified copy; torch-hub-style files carry only the hash prefix
in their name (`vggish-10086976.pth`: sha256 starts with 10086976), which is what torch.hub checks too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional
from pipeline.errors import UnknownNameError

PART_SUFFIX = ".part"          # bytes of an interrupted download, resumed by the next fetch


@dataclass(frozen=True)
class ModelFile:
    name: str                              # what `emocache weights fetch NAME` takes; a file name for URL files
    extractor: str                         # who uses it and under which params
    kind: str                              # "url": one file into weights.dir; "hf": a Hugging Face repo into the HF cache
    source: str                            # the official URL (kind url) or hub repo id (kind hf)
    licence: str
    size: Optional[int] = None             # bytes, where known exactly
    size_note: str = ""                    # approximate size where the exact one is not known
    sha256: Optional[str] = None           # full pin (kind hf: of `pin_file`)
    sha256_prefix: Optional[str] = None    # torch hub style: the digest prefix in the file name
    pin_note: str = ""                     # where the pin comes from
    hf_files: tuple[str, ...] = ()         # kind hf: the files fetched from the repo
    pin_file: Optional[str] = None         # kind hf: the file the sha256 pin is for
    revision: str = "main"                 # kind hf
    aliases: tuple[str, ...] = field(default=())   # other names params may use for it (e.g. a timm model name)

    @property
    def file_name(self) -> str:
        """The name a mirror serves it under (`<mirror>/<file_name>`) and, for URL files, the name on disk."""
        return self.name if self.kind == "url" else (self.pin_file or self.hf_files[0])

    def pin_text(self) -> str:
        if self.sha256:
            return f"sha256 {self.sha256}"
        if self.sha256_prefix:
            return f"sha256 prefix {self.sha256_prefix} (from the file name)"
        if self.kind == "hf":
            return "sha256 = the hub's ETag (checked after download)"
        return "no pin"

    def size_text(self) -> str:
        if self.size:
            return f"{self.size:,} B"
        return self.size_note or "?"


_YOLO_V7 = "https://github.com/ultralytics/yolov5/releases/download/v7.0/{}"
_YOLO_LFS = ("Git LFS oid of the same file in the Ultralytics/YOLOv5 hub repo "
             "(its yolov5n.pt oid equals the v7.0 asset's known sha256)")
_YOLO_EXTRACTOR = "tracks (detector.kind: auto | yolo, detector.weights_file)"
_YOLO_LICENCE = "AGPL-3.0"

CATALOG: tuple[ModelFile, ...] = (
    ModelFile("vggish-10086976.pth", "vggish (weights_file)", "url",
              "https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth",
              "Apache-2.0", size_note="~288 MB (72.1 M fp32 parameters)", sha256_prefix="10086976",
              pin_note="torchvggish hubconf model_urls; torch hub hash prefix"),
    ModelFile("vggish_pca_params-970ea276.pth", "vggish (postprocess: true, pca_file)", "url",
              "https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish_pca_params-970ea276.pth",
              "Apache-2.0", size_note="~70 kB (128 x 128 PCA matrix + means)", sha256_prefix="970ea276",
              pin_note="torchvggish hubconf model_urls; torch hub hash prefix"),
    ModelFile("swin_tiny_patch4_window7_224", "swin (model: swin_tiny_patch4_window7_224)", "hf",
              "timm/swin_tiny_patch4_window7_224.ms_in1k", "MIT", size_note="~114 MB (28.3 M fp32 parameters)",
              hf_files=("model.safetensors", "config.json"), pin_file="model.safetensors",
              pin_note="timm's pretrained cfg hf_hub_id; no published sha256 known: the hub's ETag (sha256 of the "
                       "LFS file) is checked after download",
              aliases=("swin_tiny_patch4_window7_224.pth",)),
    ModelFile("yolov5n.pt", _YOLO_EXTRACTOR, "url", _YOLO_V7.format("yolov5n.pt"), _YOLO_LICENCE, size=4_062_133,
              sha256="4f180cf23ba0717ada0badd6c685026d73d48f184d00fc159c2641284b2ac0a3",
              pin_note="verified against a copy of the v7.0 asset"),
    ModelFile("yolov5s.pt", _YOLO_EXTRACTOR, "url", _YOLO_V7.format("yolov5s.pt"), _YOLO_LICENCE, size=14_808_437,
              sha256="8b3b748c1e592ddd8868022e8732fde20025197328490623cc16c6f24d0782ee", pin_note=_YOLO_LFS),
    ModelFile("yolov5m.pt", _YOLO_EXTRACTOR, "url", _YOLO_V7.format("yolov5m.pt"), _YOLO_LICENCE, size=42_806_829,
              sha256="61d933360ba5a7733a36764996c800287d973889d875227f5beedd2473a97a56", pin_note=_YOLO_LFS),
    ModelFile("yolov5l.pt", _YOLO_EXTRACTOR, "url", _YOLO_V7.format("yolov5l.pt"), _YOLO_LICENCE, size=93_622_629,
              sha256="2f603b7354c25454d1270663a14d8ddc1eea98e5eebc1d84ce0c6e3150fa155f", pin_note=_YOLO_LFS),
    ModelFile("yolov5x.pt", _YOLO_EXTRACTOR, "url", _YOLO_V7.format("yolov5x.pt"), _YOLO_LICENCE,
              size_note="~174 MB", pin_note="no published sha256 known: size only, unverified"),
    ModelFile("bert-base-uncased", "text (model: bert-base-uncased)", "hf", "bert-base-uncased", "Apache-2.0",
              size_note="~440 MB", hf_files=("config.json", "tokenizer_config.json", "tokenizer.json", "vocab.txt",
                                             "model.safetensors"),
              pin_file="model.safetensors",
              sha256="68d45e234eb4a928074dfd868cead0219ab85354cc53d20e772753c6bb9169d3",
              pin_note="Git LFS oid of model.safetensors in google-bert/bert-base-uncased (as listed by its "
                       "hub duplicates)"),
)


class UnknownModelError(UnknownNameError):
    pass


def names() -> list[str]:
    return [e.name for e in CATALOG]


def entry(name: str, catalog: Iterable[ModelFile] = None) -> ModelFile:
    """The entry called `name` (or one of its aliases); KeyError naming the known ones otherwise."""
    cat = tuple(CATALOG if catalog is None else catalog)
    for e in cat:
        if name == e.name or name in e.aliases:
            return e
    raise UnknownModelError(f"unknown model {name!r}; known: {', '.join(e.name for e in cat)}")


def entry_for_file(filename: str, catalog: Iterable[ModelFile] = None) -> Optional[ModelFile]:
    try:
        return entry(Path(filename).name, catalog)
    except UnknownModelError:
        return None


def fetch_command(e: ModelFile) -> str:
    return f"emocache weights fetch {e.name}"


# ---------------------------------------------------------------- offline look-ups
def torch_hub_checkpoint_dir() -> Path:
    """Where torch.hub keeps downloaded checkpoints (TORCH_HOME honoured), without importing torch."""
    import os

    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch")
    return Path(torch_home) / "hub" / "checkpoints"


def hf_cached_file(repo_id: str, filename: str, revision: str = "main") -> Optional[Path]:
    """`filename` of `repo_id` in the local Hugging Face cache, or None. Reads the cache only."""
    from huggingface_hub import try_to_load_from_cache

    p = try_to_load_from_cache(repo_id, filename, revision=revision)
    return Path(p) if isinstance(p, str) and Path(p).exists() else None


def location(e: ModelFile, weights_dir: Path) -> Optional[Path]:
    """Where the model is on this machine, looked up as the extractors do: a file in the weights dir or the
    torch hub cache (hub repos: also a state dict saved under an alias file name, e.g. Swin's .pth), else
    the Hugging Face cache."""
    files = (e.name,) if e.kind == "url" else tuple(a for a in e.aliases if Path(a).suffix)
    for f in files:
        for d in (Path(weights_dir), torch_hub_checkpoint_dir()):
            if (d / f).is_file():
                return d / f
    if e.kind == "url":
        return None
    if any(hf_cached_file(e.source, f, e.revision) is None for f in e.hf_files):
        return None
    return hf_cached_file(e.source, e.file_name, e.revision)


def partial_path(e: ModelFile, weights_dir: Path) -> Path:
    return Path(weights_dir) / (e.file_name + PART_SUFFIX)


def partial_bytes(e: ModelFile, weights_dir: Path) -> int:
    p = partial_path(e, weights_dir)
    return p.stat().st_size if e.kind == "url" and p.is_file() else 0


def required(cfg: Any) -> list[ModelFile]:
    """Catalog entries the given params use (extractors of its datasets, with their file/model settings)."""
    specs = {s.split(".")[0] for d in cfg.datasets.values() for s in d.extractors}
    ex = cfg.extractors
    wanted: list[str] = []
    if "vggish" in specs:
        wanted.append(ex.vggish.weights_file)
        if ex.vggish.postprocess:
            wanted.append(ex.vggish.pca_file)
    if "swin" in specs:
        wanted.append(ex.video.swin.model)
    if "tracks" in specs and ex.video.detector.kind in ("yolo", "auto"):   # auto runs YOLO once the file is here
        wanted.append(ex.video.detector.weights_file)
    if "text" in specs:
        wanted.append(ex.text.model)
    out = []
    for w in wanted:
        try:   # exact names only: a local dir that happens to be called bert-base-uncased is not the hub repo
            e = entry(w)
        except UnknownModelError:
            e = None
        if e is not None and e not in out:
            out.append(e)
    return out
