"""The runtime: message dataclass, apply_stack order, Messenger forms, safe unwinding."""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch
from torch.distributions import Normal

from sbi_vi.ppl import Message, Messenger, PlateFrame, current_stack, plate, sample
from sbi_vi.ppl.handlers import seed, trace


class Recorder(Messenger):
    def __init__(self, log, tag, *, stop=False):
        super().__init__()
        self.log, self.tag, self.stop = log, tag, stop

    def process_message(self, msg):
        self.log.append(("process", self.tag))
        msg.stop = msg.stop or self.stop

    def postprocess_message(self, msg):
        self.log.append(("post", self.tag, msg.value is not None))


def test_apply_stack_processes_innermost_first_then_postprocesses_after_default():
    log = []
    with Recorder(log, "outer"), Recorder(log, "inner"):
        sample("x", Normal(0.0, 1.0))
    assert log == [
        ("process", "inner"),
        ("process", "outer"),
        ("post", "inner", True),
        ("post", "outer", True),
    ]


def test_stop_hides_the_message_from_outer_handlers_but_the_default_still_runs():
    log = []
    with Recorder(log, "outer"), Recorder(log, "inner", stop=True):
        x = sample("x", Normal(0.0, 1.0))
    assert log == [("process", "inner"), ("post", "inner", True)]
    assert x.shape == ()


def test_done_skips_the_default():
    class Fixed(Messenger):
        def process_message(self, msg):
            msg.done = True

    with Fixed():
        assert sample("x", Normal(0.0, 1.0)) is None


def test_message_is_a_slotted_dataclass_with_documented_defaults():
    msg = Message("x", "sample", Normal(0.0, 1.0), kwargs={"sample_shape": ()})
    assert dataclasses.is_dataclass(msg) and not hasattr(msg, "__dict__")
    assert msg.scale == 1.0 and msg.mask is None and msg.cond_indep_stack == ()
    assert msg.infer == {} and not msg.stop and not msg.done and msg.log_prob is None
    msg.cond_indep_stack = (PlateFrame("a", -1, 4, 2), PlateFrame("b", -2, 3, 3))
    assert msg.plates == ("a", "b")
    assert PlateFrame("a", -1, 4, 2).scale == 2.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.cond_indep_stack[0].dim = -3  # type: ignore[misc]


def model():
    return sample("x", Normal(0.0, 1.0))


def test_messenger_as_wrapper_decorator_and_context_manager():
    assert list(trace(model).get_trace()) == ["x"]

    @trace
    def decorated():
        return model()

    assert decorated().shape == () and list(decorated.trace) == ["x"]
    assert decorated.__name__ == "decorated"

    @seed(rng_seed=3)
    def seeded():
        return model()

    assert torch.equal(seeded(), seed(model, rng_seed=3)())

    with trace() as tr:
        model()
    assert list(tr) == ["x"]


def test_messenger_rejects_what_it_cannot_run():
    with pytest.raises(TypeError, match="callable"):
        trace(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="without a function"):
        trace()(1, 2)


def raising_model():
    sample("x", Normal(0.0, 1.0))
    with plate("p", 3):
        raise RuntimeError("boom")


def test_stack_is_restored_when_the_model_raises():
    with pytest.raises(RuntimeError, match="boom"):
        trace(seed(raising_model, rng_seed=0))()
    assert current_stack() == ()
    with pytest.raises(RuntimeError, match="boom"), trace(), seed(rng_seed=0):
        raising_model()
    assert current_stack() == ()


def test_leaving_a_handler_also_drops_handlers_entered_inside_it_and_never_exited():
    outer = trace()
    with outer:
        Messenger().__enter__()  # e.g. a handler whose exit was skipped
        assert len(current_stack()) == 2
    assert current_stack() == ()


def test_the_stack_is_per_thread():
    seen = []

    def worker():
        seen.append(current_stack())
        seen.append(sample("y", Normal(0.0, 1.0)).shape)

    with trace() as tr:
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
    assert seen == [(), torch.Size([])] and "y" not in tr
