"""First start: train and promote the demo model so that inference answers at once.

The same code as compose's one-shot ``bootstrap`` job (``mlops_common.demo``), with the stack's
URLs and the local user's admin token.
"""

from __future__ import annotations

from collections.abc import Callable

from mlops_common import demo

from mlops_stack.components import Stack


def ensure_demo_model(stack: Stack, out: Callable[[str], None]) -> bool:
    # The trainer's idempotency key remembers the demo job: a second start finds it finished.
    st = stack.settings
    done = demo.ensure_demo_model(
        stack.service_url(st.trainer_port),
        stack.service_url(st.inference_port),
        stack.secrets.token_admin,
        model=st.demo_model,
        dataset=st.demo_dataset,
        out=out,
    )
    if not done:
        out("see `mlops logs trainer-worker` and `mlops logs inference`")
    return done
