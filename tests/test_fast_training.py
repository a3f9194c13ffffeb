"""The fast training step: losses read every k steps, mixed precision, channels-last, compile.

On the CPU, ``amp`` means bfloat16 autocast, so the mixed-precision path runs here; the CUDA
variants (bf16, or fp16 with a gradient scaler) run where a GPU exists.
"""

import json

import pytest
import torch
from _cuda_helpers import synchronisations
from torch import nn

from scorelab import training
from scorelab.ncsn import NCSN, latest_checkpoint, train_NCSN
from scorelab.ncsn.checkpoints import read_checkpoint
from scorelab.ncsn.training import make_trainer
from scorelab.noise import geometric_sigmas
from scorelab.training import DenoisingScoreMatching, TrainingDivergedError, mixed_precision


def _model(ngf=4):
    torch.manual_seed(0)
    return NCSN(ngf=ngf, sigmas=geometric_sigmas(1.0, 0.05, 4))


DATA = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def test_mixed_precision_settings_follow_the_device(monkeypatch):
    assert mixed_precision("cpu", False) == (None, None)
    assert mixed_precision("cpu", True) == (torch.bfloat16, None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    with pytest.warns(UserWarning) if not torch.cuda.is_available() else _nothing():
        dtype, scaler = mixed_precision("cuda", True)  # a GPU without bf16, such as a T4
    assert dtype == torch.float16 and isinstance(scaler, torch.amp.GradScaler)


def test_mixed_precision_does_not_count_emulated_bf16_as_support(monkeypatch):
    # PyTorch reports bf16 on a T4 by default because it can emulate it; emulation is slow
    def bf16_like_a_t4(including_emulation=True):
        return including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", bf16_like_a_t4)
    with pytest.warns(UserWarning) if not torch.cuda.is_available() else _nothing():
        dtype, scaler = mixed_precision("cuda", True)
    assert dtype == torch.float16 and isinstance(scaler, torch.amp.GradScaler)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False


def test_amp_runs_the_network_in_bfloat16_on_the_cpu_and_stays_near_float32(single_thread):
    seen = []
    model = _model()
    model.net.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    mixed = train_NCSN(model, DATA, n_steps=4, batch_size=8, progress=False, amp=True)
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())  # float32 master weights
    plain = train_NCSN(_model(), DATA, n_steps=4, batch_size=8, progress=False)
    torch.testing.assert_close(torch.tensor(mixed), torch.tensor(plain), rtol=0.05, atol=0)


def test_channels_last_trains_in_that_layout_and_gives_the_same_run(single_thread):
    layouts = []
    model = _model()
    conv = next(m for m in model.net.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1)
    conv.register_forward_hook(
        lambda module, args, out: layouts.append(
            out.is_contiguous(memory_format=torch.channels_last)))
    fast = train_NCSN(model, DATA, n_steps=4, batch_size=8, progress=False, channels_last=True)
    assert layouts and all(layouts)
    assert all(p.is_contiguous() for p in model.parameters())  # handed back in the usual layout
    reference = _model()
    plain = train_NCSN(reference, DATA, n_steps=4, batch_size=8, progress=False)
    torch.testing.assert_close(torch.tensor(fast), torch.tensor(plain), rtol=1e-4, atol=0)
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("options", [{"amp": True}, {"channels_last": True},
                                     {"amp": True, "channels_last": True, "log_every": 3}])
def test_resume_is_exact_with_the_fast_options(tmp_path, options, single_thread):
    straight = _model()
    train_NCSN(straight, DATA, n_steps=6, batch_size=8, out_dir=tmp_path / "a",
               checkpoint_every=2, progress=False, **options)
    first = _model()
    train_NCSN(first, DATA, n_steps=2, batch_size=8, out_dir=tmp_path / "b", progress=False,
               **options)
    resumed = _model()
    train_NCSN(resumed, DATA, n_steps=6, batch_size=8, out_dir=tmp_path / "b",
               checkpoint_every=2, resume=True, progress=False, **options)
    a = read_checkpoint(latest_checkpoint(tmp_path / "a"))
    b = read_checkpoint(latest_checkpoint(tmp_path / "b"))
    assert torch.equal(a["losses"], b["losses"]) and a["step"] == b["step"] == 6
    for key in ("model", "ema", "generator", "data_order"):
        values = a[key] if isinstance(a[key], dict) else {"": a[key]}
        others = b[key] if isinstance(b[key], dict) else {"": b[key]}
        for name, value in values.items():
            assert torch.equal(value, others[name]), (key, name)


def _count_reads(trainer):
    """Wrap ``trainer._read`` so that it counts the reads (each one a synchronisation)."""
    reads, read = [], trainer._read

    def counting(losses):
        reads.append(len(losses))
        return read(losses)

    trainer._read = counting
    return reads


def test_losses_are_read_every_log_every_steps_with_the_same_values(single_thread):
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    runs = {}
    for log_every in (1, 4):
        torch.manual_seed(0)
        trainer = DenoisingScoreMatching(nn.Linear(2, 2), sigma=0.5)
        reads = _count_reads(trainer)
        calls = []
        batches = training.Batches(x, 8, generator=torch.Generator().manual_seed(1))
        history = trainer.run(batches, 10, generator=torch.Generator().manual_seed(2),
                              hooks=[(5, lambda done, value: calls.append(done))],
                              progress=False, log_every=log_every)
        runs[log_every] = history
        if log_every == 4:  # read at 4, 5 (a hook), 8 and 10 (the end): never inside a step
            assert reads == [4, 1, 3, 2] and calls == [4, 5, 8, 10]
    assert runs[1] == runs[4] and len(runs[1]) == 10


class _NanFromCall(nn.Module):
    def __init__(self, bad_call):
        super().__init__()
        self.linear, self.calls, self.bad_call = nn.Linear(2, 2), 0, bad_call

    def forward(self, x):
        self.calls += 1
        return self.linear(x) * (float("nan") if self.calls >= self.bad_call else 1.0)


def test_a_nan_read_late_names_the_step_the_steps_read_and_the_last_finite_loss():
    trainer = DenoisingScoreMatching(_NanFromCall(bad_call=7), sigma=1.0)
    history = []
    batches = training.Batches(torch.ones(10, 2), 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(TrainingDivergedError, match=r"at step 6 \(losses read every 4 steps; "
                       r"this read covered steps 4-7\): the loss is nan; last finite loss (\S+)\."
                       ) as info:
        trainer.run(batches, 12, history=history, progress=False, log_every=4)
    assert len(history) == 6 and f"{history[-1]:.4g}" in str(info.value)


def test_compile_wraps_the_network_only_when_asked(monkeypatch, single_thread):
    compiled = []

    def fake_compile(module):
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = _model()
    train_NCSN(model, DATA, n_steps=1, batch_size=8, progress=False)
    assert compiled == []
    train_NCSN(model, DATA, n_steps=1, batch_size=8, progress=False, compile=True)
    assert compiled == [model]


def test_cli_trains_with_the_fast_options_and_records_them(tmp_path, single_thread):
    from scorelab.ncsn.__main__ import main

    main(["train", "--out", str(tmp_path), "--steps", "4", "--ngf", "2", "--batch-size", "4",
          "--n-levels", "3", "--threads", "1", "--no-progress", "--amp", "--channels-last",
          "--log-every", "2", "--checkpoint-every", "2"])
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["amp"] and record["channels_last"] and not record["compile"]
    assert record["world_size"] == 1 and read_checkpoint(tmp_path / "model.pt")["kind"] == "weights"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("options", [{}, {"amp": True}, {"amp": True, "channels_last": True}])
def test_training_on_cuda_is_reproducible_and_resumes_exactly(tmp_path, options):
    runs = []
    for name in ("a", "b"):
        torch.manual_seed(0)
        model = NCSN(ngf=4, sigmas=geometric_sigmas(1.0, 0.05, 4), device="cuda")
        runs.append(train_NCSN(model, DATA, n_steps=4, batch_size=8, out_dir=tmp_path / name,
                               checkpoint_every=2, progress=False, **options))
    assert runs[0] == runs[1] and all(map(torch.isfinite, torch.tensor(runs[0])))
    torch.manual_seed(0)
    model = NCSN(ngf=4, sigmas=geometric_sigmas(1.0, 0.05, 4), device="cuda")
    (tmp_path / "a" / "checkpoints" / "step_0000004.pt").unlink()
    resumed = train_NCSN(model, DATA, n_steps=4, batch_size=8, out_dir=tmp_path / "a",
                         checkpoint_every=2, resume=True, progress=False, **options)
    assert resumed == runs[1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("options", [{}, {"amp": True, "channels_last": True}])
def test_training_steps_on_cuda_never_wait_for_the_device(options):
    # The reads of the losses synchronise; the steps between them must not: 2 steps and 12
    # steps (three passes over the data, so new shuffles too) synchronise equally often.
    torch.manual_seed(0)
    model = NCSN(ngf=4, sigmas=geometric_sigmas(1.0, 0.05, 4), device="cuda")
    trainer, batches, generator = make_trainer(model, DATA, batch_size=8, **options)
    batches = iter(batches)
    history = trainer.run(batches, 1, generator=generator, progress=False)  # first-use copies

    def run_to(n_steps):  # reading the losses once, at the end
        return lambda: trainer.run(batches, n_steps, generator=generator, history=history,
                                   progress=False, log_every=n_steps)

    few, many = synchronisations(run_to(3)), synchronisations(run_to(15))
    assert len(history) == 15 and few == many, (few, many)


@pytest.mark.slow
def test_compile_traces_the_network_into_the_same_run(monkeypatch, single_thread):
    """Dynamo's trace of the network with the eager 'aot_eager' backend (no C++ compiler run,
    which takes minutes on a CPU): the same losses as without compile, up to the order of
    float operations of the decomposed graph."""
    import functools

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    compiled = train_NCSN(_model(ngf=2), DATA, n_steps=3, batch_size=4, progress=False,
                          compile=True)
    eager = train_NCSN(_model(ngf=2), DATA, n_steps=3, batch_size=4, progress=False)
    torch.testing.assert_close(torch.tensor(compiled), torch.tensor(eager), rtol=1e-5, atol=0)
