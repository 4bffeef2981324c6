"""``replay``: rerun a model with the latent values and plate indices of a recorded trace."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sbi_vi.ppl.runtime import Message, Messenger

__all__ = ["ReplayMessenger", "replay"]


class ReplayMessenger(Messenger):
    """Takes the values of latent sample sites and the indices of plates from ``trace``.

    This is how a guide's draws (and its minibatch indices) reach the model: trace the
    guide, then run ``replay(model, trace=guide_trace)``. Observed model sites keep their
    data; sites missing from ``trace`` run as usual. A non-empty ``infer`` of a replayed
    site is merged into the model site's ``infer``.

    Args:
        fn: The model.
        trace: A recorded trace (name -> ``Message``), e.g. a guide's.

    Raises:
        ValueError: (when run) if a model site is latent but the trace's site of that name
            is observed or not a sample site, or a plate meets a non-plate site.
    """

    def __init__(
        self, fn: Callable[..., Any] | None = None, trace: Mapping[str, Message] | None = None
    ) -> None:
        super().__init__(fn)
        if not isinstance(trace, Mapping):
            raise TypeError(
                f"replay needs `trace=`, a recorded trace (name -> Message); got "
                f"{type(trace).__name__}. Record one with `trace(guide).get_trace(...)`."
            )
        self.trace = trace

    def process_message(self, msg: Message) -> None:
        kind = msg.type
        if kind != "sample" and kind != "plate":
            return
        recorded = self.trace.get(msg.name)
        if recorded is None:
            return
        if kind == "plate":
            if recorded.type != "plate":
                raise ValueError(
                    f"plate {msg.name!r} meets a {recorded.type} site of the same name in the "
                    "replayed trace; rename one of them."
                )
            if recorded.args[0] != msg.args[0]:
                raise ValueError(
                    f"plate {msg.name!r} has size {msg.args[0]} here but {recorded.args[0]} in "
                    "the replayed trace; the model and the guide must declare it alike."
                )
            msg.value = recorded.value
            return
        if msg.is_observed:
            return
        if recorded.type != "sample" or recorded.is_observed:
            what = "an observed" if recorded.type == "sample" else f"a {recorded.type}"
            raise ValueError(
                f"sample site {msg.name!r} is latent here but {what} site in the replayed "
                "trace; the guide must sample every latent site it shares with the model."
            )
        msg.value = recorded.value
        if recorded.infer:
            msg.infer = {**msg.infer, **recorded.infer}


def replay(
    fn: Callable[..., Any] | None = None, trace: Mapping[str, Message] | None = None
) -> ReplayMessenger:
    """A :class:`ReplayMessenger` (NumPyro's ``handlers.replay(fn, trace)``)."""
    return ReplayMessenger(fn, trace)
