"""Quiet by default: third-party chatter (absl / TF Lite / mediapipe C++ logs, deep_sort_realtime's INFO lines,
transformers' weight-loading bars) and our own progress lines only show with `-v` (`emocache -v CMD`).

Must run before those packages are imported: the C++ loggers read their environment variables once, at load.
"""
from __future__ import annotations

import logging
import os
import sys

# Environment switches of the C++ / hub loggers; set only when the user has not set them.
QUIET_ENV = {
    "GLOG_minloglevel": "2",               # absl/glog (mediapipe): errors only
    "TF_CPP_MIN_LOG_LEVEL": "2",           # TensorFlow Lite inside mediapipe
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}
NOISY_LOGGERS = ("absl", "deep_sort_realtime", "transformers", "huggingface_hub", "timm", "ultralytics", "urllib3",
                 "matplotlib", "PIL", "numba", "opensmile", "audmetric", "ray")
OUR_LOGGERS = ("emocache", "pipeline", "heads")


def setup_logging(verbose: bool = False) -> None:
    from pipeline import native_log

    if not verbose:
        for k, v in QUIET_ENV.items():
            os.environ.setdefault(k, v)
        native_log.install()     # mediapipe / TF Lite write to fd 2 from C++ threads: filter their lines
    else:
        native_log.uninstall()
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")
    level = logging.INFO if verbose else logging.WARNING
    for name in (*NOISY_LOGGERS, *OUR_LOGGERS):
        logging.getLogger(name).setLevel(level)
    from pipeline import progress

    progress.set_log_lines(verbose)   # bars on a terminal vanish when done; off one, log lines only with -v
    if not verbose and "transformers" in sys.modules:      # already imported: switch its bars off directly
        try:
            from transformers.utils import logging as tlog

            tlog.disable_progress_bar()
            tlog.set_verbosity_error()
        except ImportError:
            pass
