"""One place decides threads per stage: budgets split over workers, small heads on one thread, applied to
torch, BLAS and ffmpeg."""
import pytest

torch = pytest.importorskip("torch")

from pipeline import threads  # noqa: E402


def test_extract_budget_from_num_threads_or_cpus_split_over_workers():
    assert threads.plan_threads(3, "extract", decode_workers=2).torch == 3
    p = threads.plan_threads(0, "extract", workers=4, decode_workers=2, cpus=16)
    assert (p.torch, p.ffmpeg, p.budget) == (4, 2, 4)                # 16 cores / 4 workers; 4 / 2 decoders
    assert threads.plan_threads(0, "extract", workers=8, decode_workers=4, cpus=2).torch == 1   # never 0
    assert threads.plan_threads(0, "extract", decode_workers=4, cpus=2).ffmpeg == 1


def test_train_defaults_to_one_thread_and_respects_an_explicit_count():
    assert threads.plan_threads(0, "train", cpus=64).torch == threads.SMALL_HEAD_THREADS == 1
    assert threads.plan_threads(6, "train", cpus=64).torch == 6
    with pytest.raises(ValueError, match="stage"):
        threads.plan_threads(0, "predict")


def test_apply_sets_torch_blas_and_ffmpeg(make_config, monkeypatch):
    from threadpoolctl import threadpool_info

    before = torch.get_num_threads()
    try:
        plan = threads.for_extraction(make_config(runtime={"num_threads": 1}, media={"decode_workers": 2}))
        assert torch.get_num_threads() == 1 == plan.torch
        assert all(pool["num_threads"] == 1 for pool in threadpool_info() if pool["user_api"] == "blas")
        assert threads.ffmpeg_input_options() == {"threads": 1}
        import ffmpeg
        args = ffmpeg.input("a.wav", **threads.ffmpeg_input_options()).output("pipe:").get_args()
        assert args[:3] == ["-threads", "1", "-i"]                    # a decoder (input) option
        threads.for_training(0)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_head_training_uses_the_train_plan(monkeypatch):
    import heads.train as train

    seen = []
    monkeypatch.setattr(train, "for_training", lambda n: seen.append(n))
    from emocache.config import ExperimentConfig
    from heads.synthetic import make_synthetic

    data = make_synthetic(24, {"vggish": (4, 8)}, 3, False, signal=0.3, min_rows=2)
    exp = ExperimentConfig(dataset="d", modalities=["vggish"], head="mlp")
    exp = exp.model_copy(update={"train": exp.train.model_copy(update={"epochs": 1, "seeds": [0], "lr_milestones": [],
                                                                       "num_threads": 0, "device": "cpu"})})
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        train.train_on_data(exp, data, d)
    assert seen == [0]
